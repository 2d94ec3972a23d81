package pipeline_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// TestRelayTLSModeInAnyCase: a relay profile built in Go with tls
// "STARTTLS", and one reloaded with " StartTLS ", send over TLS. (The mode
// used to reach the Sender as written, match no constant, and the message
// went out in plain text without a certificate check.)
func TestRelayTLSModeInAnyCase(t *testing.T) {
	t.Parallel()
	srv, pool := tlsServer(t, "127.0.0.4")
	env := pipelinetest.New(t, func(c *pipeline.Config) {
		c.Relays = map[string]pipeline.Relay{"main": {Host: srv.Host(), Port: srv.Port(), TLS: "STARTTLS"}}
	})
	env.Start(pipeline.Options{TLSConfig: &tls.Config{RootCAs: pool}})
	viaRelay := queuefile.Params{Relay: "main", From: "app@example.com", To: []string{"a@example.org"}}
	wantSent(t, env.Wait(env.Enqueue(testMessage(1), viaRelay)))

	re := *env.Config
	re.Relays = map[string]pipeline.Relay{"main": {Host: srv.Host(), Port: srv.Port(), TLS: " StartTLS "}}
	if err := env.Pipeline.Reload(&re); err != nil {
		t.Fatal(err)
	}
	wantSent(t, env.Wait(env.Enqueue(testMessage(2), viaRelay)))
	msgs := srv.Messages()
	if len(msgs) != 2 {
		t.Fatalf("server got %d messages, want 2", len(msgs))
	}
	for i, m := range msgs {
		if !m.TLS {
			t.Errorf("message %d went out in plain text", i+1)
		}
	}
}

// sealRaw puts msg into env's queue sealed with the JSON parameters given,
// as a producer other than queuefile.Enqueue (or an older one) might.
func sealRaw(t *testing.T, env *pipelinetest.Env, msg []byte, params map[string]any) string {
	t.Helper()
	sum := sha256.Sum256(msg)
	params["v"], params["sha256"], params["size"] = 1, hex.EncodeToString(sum[:]), len(msg)
	plain, err := json.Marshal(params)
	if err != nil {
		t.Fatal(err)
	}
	var ct bytes.Buffer
	w, err := age.Encrypt(&ct, env.Queue.Recipients...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(ct.Bytes())
	file := []byte(queuefile.SealedField + ": v1\r\n")
	for len(b64) > 0 {
		n := min(76, len(b64))
		file = append(file, " "+b64[:n]+"\r\n"...)
		b64 = b64[n:]
	}
	file = append(file, msg...)
	name, err := queuefile.NewName(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(tmp, file, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(env.Config.QueueDir, name)); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestSealedTLSModeInAnyCase: a file sealed by another producer with tls
// "STARTTLS" goes out over TLS; one with a mode smtpq does not know is
// filed as invalid, never sent in plain text.
func TestSealedTLSModeInAnyCase(t *testing.T) {
	t.Parallel()
	srv, pool := tlsServer(t, "127.0.0.4")
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{TLSConfig: &tls.Config{RootCAs: pool}})
	params := func(mode string) map[string]any {
		return map[string]any{"host": srv.Host(), "port": srv.Port(), "tls": mode, "from": "app@example.com", "to": []string{"a@example.org"}}
	}
	capitals := sealRaw(t, env, testMessage(1), params("STARTTLS"))
	unknown := sealRaw(t, env, testMessage(2), params("plain"))
	wantSent(t, env.Wait(capitals))
	wantFailed(t, env.Wait(unknown), stages.ClassInvalid)
	if msgs := srv.Messages(); len(msgs) != 1 || !msgs[0].TLS {
		t.Errorf("server got %d messages, want one, over TLS (the first went in plain text: %v)", len(msgs), len(msgs) > 0 && !msgs[0].TLS)
	}
}
