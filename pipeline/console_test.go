package pipeline_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
)

// consoleHash is a bcrypt hash of "pw" at the lowest cost.
var consoleHash = func() string {
	h, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	return string(h)
}()

// TestConfigConsole: the console section is checked at load: users with
// bcrypt hashes, a certificate with its key, no plain HTTP off loopback
// unless insecure; and the hashes are not printed back.
func TestConfigConsole(t *testing.T) {
	t.Parallel()
	users := fmt.Sprintf("users: {admin: {password_hash: %q}}", consoleHash)
	for _, ok := range []string{
		"console: {listen: 127.0.0.1:8025, " + users + "}",
		"console: {listen: \"[::1]:8025\", " + users + "}",
		"console: {listen: localhost:0, " + users + "}",
		"console: {listen: 0.0.0.0:8025, insecure: true, " + users + "}",
		"console: {listen: 192.0.2.1:8025, tls: {cert_file: c.pem, key_file: k.pem}, " + users + "}",
		"console: {users: {admin: {password_hash: nonsense}}}", // off: not checked
	} {
		if _, err := parseYAML(t, ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	wantRefused(t, []refusedConfig{
		{"console: {listen: 127.0.0.1:8025}", []string{"console.users", "at least one user"}},
		{"console: {listen: 127.0.0.1:8025, users: {admin: {password_hash: secret123}}}", []string{"console.users.admin.password_hash", "not a bcrypt hash"}},
		{"console: {listen: 0.0.0.0:8025, " + users + "}", []string{"console.listen 0.0.0.0:8025", "not a loopback", "console.tls", "console.insecure"}},
		{"console: {listen: \":8025\", " + users + "}", []string{"not a loopback"}},
		{"console: {listen: 127.0.0.1:8025, tls: {cert_file: c.pem}, " + users + "}", []string{"console.tls", "key_file"}},
		{"console: {listen: 8025, " + users + "}", []string{"console.listen", "host:port"}},
		{"console: {listen: 127.0.0.1:8025, user: {}}", []string{"line", `"user"`}},
	})
	_, err := parseYAML(t, "console: {listen: 127.0.0.1:8025, users: {admin: {password_hash: secret123}}}")
	if err != nil && strings.Contains(err.Error(), "secret123") {
		t.Errorf("the error shows the hash: %v", err)
	}
	cfg, err := parseYAML(t, "console: {listen: 127.0.0.1:8025, "+users+"}")
	if err != nil {
		t.Fatal(err)
	}
	out, err := cfg.Masked()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), consoleHash) || !strings.Contains(string(out), "[set]") {
		t.Errorf("config check output shows the hash or not that it is set:\n%s", out)
	}
}

// TestConsoleServedByRun: with console.listen, Run serves the console; a
// reload from it applies a changed file, or shows why it is refused.
func TestConsoleServedByRun(t *testing.T) {
	env := pipelinetest.New(t, func(c *pipeline.Config) {
		c.Console = pipeline.ConsoleConfig{Listen: "127.0.0.1:0", Users: map[string]pipeline.ConsoleUser{"ops": {PasswordHash: consoleHash}}}
	})
	writeConfig := func(maxThreads int) {
		t.Helper()
		c := *env.Config
		c.MaxThreads = maxThreads
		b, err := yaml.Marshal(map[string]any{
			"queue_dir": c.QueueDir, "sent_dir": c.SentDir, "undeliverable_dir": c.UndeliverableDir,
			"identity_file": []string(c.IdentityFile), "max_threads": maxThreads,
			"console": map[string]any{"listen": "127.0.0.1:0", "users": map[string]any{"ops": map[string]string{"password_hash": consoleHash}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(env.Config.Path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env.Start(pipeline.Options{Version: "v9.8.7"})
	// A first message, so that the service is up and the console listening.
	srv := smtptest.NewServer(t)
	wantSent(t, env.Wait(env.Enqueue(testMessage(0), srv.Params("warmup@example.org"))))
	addr := env.Pipeline.ConsoleAddr()
	if addr == nil {
		t.Fatal("no console address while running")
	}
	base := "http://" + addr.String()
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar}
	post := func(path string, form url.Values) string {
		t.Helper()
		resp, err := hc.PostForm(base+path, form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("POST %s: %d\n%s", path, resp.StatusCode, b)
		}
		return string(b)
	}
	page := post("/login", url.Values{"username": {"ops"}, "password": {"pw"}})
	for _, want := range []string{"v9.8.7", env.Config.QueueDir, "max_threads</th><td>4<"} {
		if !strings.Contains(page, want) {
			t.Errorf("overview lacks %q", want)
		}
	}
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if csrf == nil {
		t.Fatal("no CSRF token")
	}
	writeConfig(0)
	if page := post("/reload", url.Values{"csrf": {csrf[1]}}); !strings.Contains(page, "Reload refused") || !strings.Contains(page, "max_threads 0 must be at least 1") {
		t.Errorf("reload of a bad file:\n%s", page)
	}
	writeConfig(6)
	if page := post("/reload", url.Values{"csrf": {csrf[1]}}); !strings.Contains(page, "Configuration reloaded.") || !strings.Contains(page, "max_threads</th><td>6<") {
		t.Errorf("reload:\n%s", page)
	}
	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}
	if env.Pipeline.ConsoleAddr() != nil {
		t.Error("console address still set after Run returned")
	}
	if _, err := http.Get(base + "/login"); err == nil {
		t.Error("the console still answers after Run returned")
	}
}
