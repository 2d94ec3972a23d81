package pipelinetest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The README's example test (the Go block under "Embedding in Go tests")
// compiles and passes as a user would run it: in a module of its own that
// requires smtpq, with a replace to this checkout.
func TestReadmeExampleInAModuleOfItsOwn(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	code := readmeGoBlock(t, string(readme), "func TestWelcomeMail(")
	goMod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goSum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	goLine := "go 1.26"
	for _, l := range strings.Split(string(goMod), "\n") {
		if strings.HasPrefix(l, "go ") {
			goLine = l
		}
	}

	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/welcome\n\n"+goLine+"\n\n"+
		"require github.com/smtpq/smtpq v0.0.0\n\n"+
		"replace github.com/smtpq/smtpq => "+root+"\n")
	write("go.sum", string(goSum))
	write("welcome_test.go", "package welcome\n\n"+code)

	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s in a module of its own: %v\n%s\nwelcome_test.go:\n%s", strings.Join(args, " "), err, out, code)
		}
		return string(out)
	}
	out := run("test", "-count=1", "-v", "-run", "^TestWelcomeMail$", ".")
	if !strings.Contains(out, "--- PASS: TestWelcomeMail") {
		t.Fatalf("the README's test did not pass:\n%s", out)
	}
}

// readmeGoBlock returns the fenced Go block of the README that contains
// marker, with its four-space indentation turned into tabs.
func readmeGoBlock(t *testing.T, readme, marker string) string {
	t.Helper()
	for _, block := range strings.Split(readme, "```go\n")[1:] {
		code, _, ok := strings.Cut(block, "```")
		if ok && strings.Contains(code, marker) {
			return strings.ReplaceAll(code, "    ", "\t")
		}
	}
	t.Fatalf("no Go block with %q in the README", marker)
	return ""
}
