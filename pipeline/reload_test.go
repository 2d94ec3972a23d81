package pipeline_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/queuefile"
)

// TestReloadAppliesLimitsAndRefusesBadConfigs reloads a running pipeline:
// a configuration that does not validate, or that moves the folders, is
// refused and the old one stays; a valid one changes the host's connection
// cap for the mail that follows.
func TestReloadAppliesLimitsAndRefusesBadConfigs(t *testing.T) {
	// Count sessions in progress at the server, from greeting to the end of
	// the message.
	var mu sync.Mutex
	inFlight, peak := 0, 0
	srv := smtptest.NewStarted(t, func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			mu.Lock()
			defer mu.Unlock()
			switch p.Step {
			case smtptest.Mail:
				inFlight++
				peak = max(peak, inFlight)
			case smtptest.AfterDot:
				inFlight--
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t, func(c *pipeline.Config) {
		c.MaxThreads = 4
		def := c.Hosts["default"]
		def.MaxConnections = 4
		def.MaxMessagesPerConnection = 1 // a new session per message: the cap is what limits them
		c.Hosts["default"] = def
	})
	env.Start(pipeline.Options{})

	bad := *env.Config
	bad.MaxThreads = 0
	if err := env.Pipeline.Reload(&bad); err == nil || !strings.Contains(err.Error(), "max_threads") {
		t.Errorf("Reload with max_threads 0: %v, want an error naming max_threads", err)
	}
	moved := *env.Config
	moved.QueueDir += "-elsewhere"
	if err := env.Pipeline.Reload(&moved); err == nil || !strings.Contains(err.Error(), "queue_dir") {
		t.Errorf("Reload with another queue_dir: %v, want an error naming queue_dir", err)
	}

	good := *env.Config
	good.Hosts = map[string]pipeline.HostLimits{}
	for k, v := range env.Config.Hosts {
		good.Hosts[k] = v
	}
	lim := good.Hosts["default"]
	lim.MaxConnections = 1
	good.Hosts[srv.Host()] = lim
	if err := env.Pipeline.Reload(&good); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	const n = 12
	for i := range n {
		env.Enqueue(testMessage(i), queuefile.Params{Host: srv.Host(), Port: srv.Port(), TLS: queuefile.TLSNone,
			From: "app@example.com", To: []string{fmt.Sprintf("user%d@example.org", i)}})
	}
	wantAllSent(t, env, n)
	ctx, cancel := context.WithTimeout(context.Background(), pipelinetest.WaitTimeout)
	defer cancel()
	if _, err := srv.WaitMessages(ctx, n); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if peak != 1 {
		t.Errorf("up to %d sessions at once after reloading max_connections 1 for %s", peak, srv.Host())
	}
}
