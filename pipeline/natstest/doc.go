// Package natstest starts real NATS servers with JetStream inside the test
// process, the way net/http/httptest starts real HTTP servers: tests talk to
// them over loopback TCP with the ordinary client, so what they prove holds
// for a deployed server too.
//
// NewServer starts one server; NewCluster starts a JetStream cluster of n
// nodes and returns once the nodes have elected a meta leader and all of them
// are known to it, so a test can create replicated streams right away.
// Cluster.Stop and Cluster.Restart take a node down and bring it back on the
// same ports and store folder, for tests of a node lost in the middle of
// work.
//
// A test of a lost node looks like this:
//
//	c := natstest.NewCluster(t, 3)
//	nc, err := nats.Connect(c.URL(), nats.MaxReconnects(-1))
//	...
//	c.Stop(1)    // node 1 is lost; the client moves to another node
//	...
//	c.Restart(1) // node 1 is back and has caught up with the cluster
//
// A request a client sends in the moment its server stops can be lost
// without an error: the client only learns of the loss later and does not
// resend it. Tests that stop servers should give each request (publish,
// fetch, ack, stream info) its own short timeout and try again, as the
// service itself must.
//
// Every server listens on 127.0.0.1 only, on ports the system picks, keeps
// its JetStream files in a folder from t.TempDir, and is shut down, and
// waited for, when the test ends, so a test that checks for leaked
// goroutines sees none from the servers. Server logs are dropped unless
// WithLogging is given; errors the server reports while starting are shown
// when it fails to start.
//
// The kit is meant for tests only, but its files build on every platform
// the service builds on.
package natstest
