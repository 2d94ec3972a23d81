package natstest

import (
	"net"
	"testing"
)

// A route port that another process takes between its choice and the
// server's bind does not fail the cluster: it starts again on others.
func TestClusterRetriesATakenRoutePort(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := taken.Addr().(*net.TCPAddr).Port
	tries := 0
	pickPorts = func(n int) ([]int, error) {
		tries++
		ports, err := freePorts(n)
		if tries == 1 && err == nil {
			ports[1] = busy
		}
		return ports, err
	}
	t.Cleanup(func() { pickPorts = freePorts })
	c := NewCluster(t, 3)
	if tries < 2 {
		t.Errorf("the cluster started on a taken port (%d tries)", tries)
	}
	if len(c.URLs()) != 3 {
		t.Errorf("%d servers", len(c.URLs()))
	}
}
