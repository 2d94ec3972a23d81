package pipeline_test

import (
	"crypto/tls"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
)

// natsPassword is the NATS password of these tests: it must never show in
// an error.
const natsPassword = "nats-s3cret-pass"

// writeFile writes b to name in a new folder and returns its path.
func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConnectNATSCredentials connects to real NATS servers that require a
// user and password, an nkey, or TLS, with what the nats section of the
// configuration names: each way in, and a wrong password refused without
// the password in the error.
func TestConnectNATSCredentials(t *testing.T) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	cert, _, err := smtptest.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	caFile := writeFile(t, "ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))

	for _, tc := range []struct {
		name   string
		server func(*server.Options)
		config pipeline.NATSConfig
		fails  string // a part of the error, if the connection must fail
	}{
		{name: "user and password file",
			server: func(o *server.Options) { o.Username, o.Password = "smtpq", natsPassword },
			config: pipeline.NATSConfig{User: "smtpq", PasswordFile: writeFile(t, "pw", []byte(natsPassword+"\n"))}},
		{name: "wrong password",
			server: func(o *server.Options) { o.Username, o.Password = "smtpq", natsPassword },
			config: pipeline.NATSConfig{User: "smtpq", PasswordFile: writeFile(t, "pw", []byte("not-"+natsPassword+"\n"))},
			fails:  "authorization"},
		{name: "nkey seed file",
			server: func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} },
			config: pipeline.NATSConfig{NKeyFile: writeFile(t, "user.nk", seed)}},
		{name: "TLS with the server's CA",
			server: func(o *server.Options) {
				o.TLS, o.TLSConfig = true, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			},
			config: pipeline.NATSConfig{TLS: pipeline.NATSTLS{CAFile: caFile}}},
		{name: "TLS without the server's CA",
			server: func(o *server.Options) {
				o.TLS, o.TLSConfig = true, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			},
			config: pipeline.NATSConfig{},
			fails:  "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.NewServer(t, natstest.WithOptions(tc.server))
			cfg := tc.config
			cfg.URLs = pipeline.StringList{srv.URL()}
			nc, js, err := pipeline.ConnectNATS(&cfg, "")
			if tc.fails != "" {
				if err == nil {
					nc.Close()
					t.Fatal("connected, want it refused")
				}
				if !strings.Contains(strings.ToLower(err.Error()), tc.fails) || strings.Contains(err.Error(), natsPassword) {
					t.Errorf("error %q: want it to say %q, without the password", err, tc.fails)
				}
				return
			}
			if err != nil {
				t.Fatalf("connecting: %v", err)
			}
			defer nc.Close()
			if _, err := js.AccountInfo(t.Context()); err != nil {
				t.Errorf("JetStream through the connection: %v", err)
			}
		})
	}
}
