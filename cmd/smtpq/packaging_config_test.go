package main

// The configuration files the packages install (cmd/smtpq/packaging) are
// documentation too: the .deb's /etc/smtpq/smtpq.yaml says it writes every
// setting out, defaults as comments. These tests read the commented YAML
// back and hold it to the configuration the code knows (pipeline.Config's
// keys, and the values "smtpq config check" prints), so that a new key or a
// changed default cannot leave the files behind.

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/smtpq/smtpq/pipeline"
)

const (
	debConffile = "packaging/deb/smtpq.yaml"     // /etc/smtpq/smtpq.yaml
	msiConfig   = "packaging/windows/smtpq.yaml" // C:\ProgramData\smtpq\smtpq.yaml
	// defaultsMarker starts the part of a file whose commented YAML states
	// defaults (before it, commented YAML is an example, such as a relay).
	defaultsMarker = `# Defaults, as "smtpq config check" prints them:`
)

// commentedYAML matches a comment line that is YAML put out of action:
// "# key: value", "#   key:", "#   - item". Configuration keys are lower
// case, so prose ("# Note: ...") does not match.
var commentedYAML = regexp.MustCompile(`^# ( *)([a-z_][a-z0-9_]*:( |$)|- )`)

// documentedConfig is a configuration file read with its comments: what it
// sets and what it shows in comments, merged into one mapping, and the
// commented defaults alone.
type documentedConfig struct {
	all      *yaml.Node
	defaults *yaml.Node
}

// readDocumented parses text: its active lines, and each run of commented
// YAML lines (which must start with a top-level key) as a YAML fragment.
func readDocumented(text string) (documentedConfig, error) {
	lines := strings.Split(text, "\n")
	active := make([]string, len(lines)) // comments blanked: line numbers stay
	d := documentedConfig{all: mappingNode(), defaults: mappingNode()}
	var frag []string
	fragStart, inDefaults := 0, false
	flush := func() error {
		if len(frag) == 0 {
			return nil
		}
		defer func() { frag = nil }()
		n, err := parseMapping(strings.Join(frag, "\n"))
		if err != nil {
			return fmt.Errorf("commented YAML from line %d: %w", fragStart, err)
		}
		shiftLines(n, fragStart-1)
		if inDefaults {
			if err := mergeMapping(d.defaults, n, ""); err != nil {
				return fmt.Errorf("line %d: %w", fragStart, err)
			}
		}
		if err := mergeMapping(d.all, n, ""); err != nil {
			return fmt.Errorf("line %d: %w", fragStart, err)
		}
		return nil
	}
	for i, line := range lines {
		m := commentedYAML.FindStringSubmatch(line)
		if m == nil {
			if err := flush(); err != nil {
				return d, err
			}
			if !strings.HasPrefix(line, "#") {
				active[i] = line
			}
			inDefaults = inDefaults || line == defaultsMarker
			continue
		}
		if len(frag) == 0 {
			if m[1] != "" {
				return d, fmt.Errorf("line %d: commented YAML starts indented: keep a section's lines together, from its top-level key", i+1)
			}
			fragStart = i + 1
		}
		frag = append(frag, strings.TrimPrefix(line, "# "))
	}
	if err := flush(); err != nil {
		return d, err
	}
	n, err := parseMapping(strings.Join(active, "\n"))
	if err != nil {
		return d, err
	}
	return d, mergeMapping(d.all, n, "")
}

// shiftLines adds by to the line numbers of n and all below it: a
// fragment's lines counted from the top of the file.
func shiftLines(n *yaml.Node, by int) {
	n.Line += by
	for _, c := range n.Content {
		shiftLines(c, by)
	}
}

func mappingNode() *yaml.Node { return &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"} }

// parseMapping parses YAML text whose top level is a mapping (or empty).
func parseMapping(text string) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return mappingNode(), nil
	}
	if doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: not a mapping of keys", doc.Content[0].Line)
	}
	return doc.Content[0], nil
}

// mergeMapping adds src's keys to dst; a section in both is merged, any
// other key in both is an error.
func mergeMapping(dst, src *yaml.Node, path string) error {
	for i := 0; i+1 < len(src.Content); i += 2 {
		k, v := src.Content[i], src.Content[i+1]
		old := lookup(dst, k.Value)
		switch {
		case old == nil:
			dst.Content = append(dst.Content, k, v)
		case old.Kind == yaml.MappingNode && v.Kind == yaml.MappingNode:
			if err := mergeMapping(old, v, join(path, k.Value)); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s is written twice", join(path, k.Value))
		}
	}
	return nil
}

// lookup returns the value of key in mapping n, or nil.
func lookup(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// checkKeys walks n (YAML as written) beside t (the Go type that reads it)
// and reports every key t does not know; with complete, it also reports
// every key of a section that n shows but leaves out. A section written as
// null, {} or [] need not show what its entries hold.
func checkKeys(n *yaml.Node, t reflect.Type, path string, complete bool, report func(string, ...any)) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if isNull(n) {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			report("%s (line %d): a section, written as a value", path, n.Line)
			return
		}
		checkSection(n, t, path, complete, report)
	case reflect.Map:
		for i := 0; i+1 < len(n.Content) && n.Kind == yaml.MappingNode; i += 2 {
			checkKeys(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), complete, report)
		}
	case reflect.Slice:
		for i, item := range n.Content {
			if n.Kind == yaml.SequenceNode {
				checkKeys(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i), complete, report)
			}
		}
	}
}

// checkSection is checkKeys for a struct: its keys are its fields' yaml tags.
func checkSection(n *yaml.Node, t reflect.Type, path string, complete bool, report func(string, ...any)) {
	fields := map[string]reflect.Type{}
	var order []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag != "" && tag != "-" {
			fields[tag] = f.Type
			order = append(order, tag)
		}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		ft, ok := fields[k.Value]
		if !ok {
			report("%s (line %d): not a configuration key", join(path, k.Value), k.Line)
			continue
		}
		seen[k.Value] = true
		checkKeys(n.Content[i+1], ft, join(path, k.Value), complete, report)
	}
	for _, tag := range order {
		if complete && !seen[tag] {
			report("%s: not written out", join(path, tag))
		}
	}
}

// checkDefaults compares each value in n (commented defaults) with the one
// at the same place in eff (what "smtpq config check" prints for the file).
// A section config check prints as null (nats: off) has no values to
// compare: its defaults are taken where it is used.
func checkDefaults(n, eff *yaml.Node, path string, report func(string, ...any)) {
	if eff != nil && isNull(eff) {
		return
	}
	if n.Kind == yaml.MappingNode && len(n.Content) > 0 {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			v := lookup(eff, k.Value)
			if v == nil {
				report("%s (line %d): config check prints no such setting", join(path, k.Value), k.Line)
				continue
			}
			checkDefaults(n.Content[i+1], v, join(path, k.Value), report)
		}
		return
	}
	if !sameValue(n, eff) {
		report("%s: commented default %s, but config check prints %s", path, nodeText(n), nodeText(eff))
	}
}

// sameValue compares two YAML values; two durations compare as durations
// ("5m" is "5m0s").
func sameValue(a, b *yaml.Node) bool {
	if a.Kind == yaml.ScalarNode && b.Kind == yaml.ScalarNode {
		da, errA := time.ParseDuration(a.Value)
		db, errB := time.ParseDuration(b.Value)
		if errA == nil && errB == nil {
			return da == db
		}
	}
	var va, vb any
	if a.Decode(&va) != nil || b.Decode(&vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

// nodeText is n as YAML, without its comments.
func nodeText(n *yaml.Node) string {
	c := *n
	c.HeadComment, c.LineComment, c.FootComment = "", "", ""
	b, err := yaml.Marshal(&c)
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(string(b))
}

// configProblems checks a configuration file as installed: it loads, every
// key in it and in its commented YAML is a configuration key, and with
// complete every setting is written out and each commented default is the
// value config check prints.
func configProblems(t *testing.T, path string, text []byte, complete bool) []string {
	t.Helper()
	var problems []string
	report := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	cfg, err := pipeline.ParseConfig(text, path)
	if err != nil {
		return []string{err.Error()}
	}
	doc, err := readDocumented(string(text))
	if err != nil {
		return []string{err.Error()}
	}
	checkKeys(doc.all, reflect.TypeFor[pipeline.Config](), "", complete, report)
	if !complete {
		return problems
	}
	if len(doc.defaults.Content) == 0 {
		report("no commented defaults after %q", defaultsMarker)
	}
	masked, err := cfg.Masked()
	if err != nil {
		t.Fatal(err)
	}
	eff, err := parseMapping(string(masked))
	if err != nil {
		t.Fatal(err)
	}
	checkDefaults(doc.defaults, eff, "", report)
	return problems
}

// TestPackagedConfigDocumentsEveryKey holds the .deb's conffile to its
// claim (every setting written out, defaults as comments, in README.md
// "Install") and the .msi's configuration to known keys.
func TestPackagedConfigDocumentsEveryKey(t *testing.T) {
	for _, c := range []struct {
		path     string
		complete bool
	}{{debConffile, true}, {msiConfig, false}} {
		text, err := os.ReadFile(c.path)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range configProblems(t, c.path, text, c.complete) {
			t.Errorf("%s: %s", c.path, p)
		}
	}
}

// TestPackagedConfigCheckFails shows that the check above finds what it
// is for: an unknown key, a section left out, a wrong default, a key left
// out of a section, and commented YAML that starts indented.
func TestPackagedConfigCheckFails(t *testing.T) {
	deb, err := os.ReadFile(debConffile)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(old, repl string) []byte {
		t.Helper()
		if !strings.Contains(string(deb), old) {
			t.Fatalf("%s has no %q", debConffile, old)
		}
		return []byte(strings.Replace(string(deb), old, repl, 1))
	}
	for _, c := range []struct {
		text []byte
		want string
	}{
		{edit("# max_threads: 16", "# max_thread: 16"), "max_thread (line"},
		{edit("# max_threads: 16", "# max_threads: 8"), "max_threads: commented default 8, but config check prints 16"},
		{edit("#   max_backoff: 1h\n", ""), "retry.max_backoff: not written out"},
		{edit("# sendmail:\n#   domain: \"\"", "# sendmail:\n#   domain: host.example"), "sendmail.domain: commented default host.example"},
		{edit("#   min_backoff: 5m", "#   min_backoff: 300s"), ""}, // the same duration
		{edit("#   ack_wait: 1m\n", ""), "nats.ack_wait: not written out"},
		{edit("#   ack_wait: 1m\n", "#   ack_waits: 1m\n"), "nats.ack_waits (line"},
		{edit("# retry:\n", "# retry:\n#\n"), "starts indented"},
	} {
		problems := configProblems(t, debConffile, c.text, true)
		got := strings.Join(problems, "\n")
		if c.want == "" && len(problems) > 0 || c.want != "" && !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, c.want) }) {
			t.Errorf("want a problem with %q, got:\n%s", c.want, got)
		}
	}
	// The .msi's configuration is held to known keys only.
	if p := configProblems(t, msiConfig, []byte("queue_dir: q\nsent_dir: s\nundeliverable_dir: u\n# relays:\n#   office:\n#     hots: h\n"), false); len(p) != 1 || !strings.Contains(p[0], "relays.office.hots (line 6)") {
		t.Errorf("an unknown key in a commented example: %q", p)
	}
}
