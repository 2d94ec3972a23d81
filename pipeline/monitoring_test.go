package pipeline_test

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
)

// exported lists the metric families a running smtpq serves (with a message
// sent so every family has a sample).
func exported(t *testing.T) map[string]bool {
	srv := smtptest.NewServer(t)
	env := pipelinetest.New(t, func(c *pipeline.Config) { c.Metrics.Listen = "127.0.0.1:0" })
	env.Start(pipeline.Options{})
	env.Enqueue(testMessage(1), srv.Params("user@example.org"))
	env.WaitFinal(1)
	// The session closes after the idle timeout: then its duration is
	// observed too, once smtpq has closed its end, which may come a moment
	// after the server saw the QUIT: poll.
	ctx, cancel := context.WithTimeout(context.Background(), pipelinetest.WaitTimeout)
	defer cancel()
	if err := srv.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	var body string
	for {
		_, body = get(t, "http://"+env.Pipeline.MetricsAddr().String()+"/metrics")
		if strings.Contains(body, "smtpq_smtp_session_duration_seconds_count") || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond) // the metric is observed in another goroutine: nothing to wait on
	}
	names := map[string]bool{"up": true}
	for _, line := range strings.Split(body, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				names[f[2]+suffix] = true
			}
		}
	}
	return names
}

var metricRef = regexp.MustCompile(`\b(smtpq_[a-z_]+|up)\b`)

func TestMonitoringFilesUseExportedMetrics(t *testing.T) {
	names := exported(t)
	dash, err := os.ReadFile("monitoring/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(dash, &d); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	var exprs []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	rules, err := os.ReadFile("monitoring/prometheus-alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(rules, &r); err != nil {
		t.Fatalf("alert rules are not valid YAML: %v", err)
	}
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			if rule.Alert == "" || rule.Expr == "" {
				t.Errorf("rule %+v lacks a name or an expression", rule)
			}
			exprs = append(exprs, rule.Expr)
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("only %d expressions found", len(exprs))
	}
	for _, e := range exprs {
		for _, m := range metricRef.FindAllString(e, -1) {
			if !names[m] {
				t.Errorf("%q uses %s, which smtpq does not export", e, m)
			}
		}
	}
}
