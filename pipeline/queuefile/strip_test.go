package queuefile_test

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// checkStrip runs Strip(in, IsSealedField) and compares everything it
// returns. The removed fields and the output together must be the input.
func checkStrip(t *testing.T, in, out string, removed []string, headerEnd, leading bool) {
	t.Helper()
	var buf bytes.Buffer
	res, err := queuefile.Strip(&buf, strings.NewReader(in), queuefile.IsSealedField)
	if err != nil {
		t.Fatalf("Strip: %v", err)
	}
	if buf.String() != out {
		t.Errorf("output\n got %q\nwant %q", buf.String(), out)
	}
	var raws []string
	total := buf.Len()
	for _, f := range removedFields(res.Removed) {
		raws = append(raws, string(f.Raw))
		total += len(f.Raw)
		if !queuefile.IsSealedField(f.Name) || !strings.HasPrefix(strings.ToLower(string(f.Raw)), strings.ToLower(f.Name)) {
			t.Errorf("removed field named %q, raw %.40q", f.Name, f.Raw)
		}
	}
	if !slices.Equal(raws, removed) {
		t.Errorf("removed\n got %q\nwant %q", raws, removed)
	}
	if total != len(in) {
		t.Errorf("output and removed fields hold %d bytes, input %d", total, len(in))
	}
	if res.HeaderEnd != headerEnd {
		t.Errorf("HeaderEnd = %v, want %v", res.HeaderEnd, headerEnd)
	}
	if res.LeadingBlock != leading {
		t.Errorf("LeadingBlock = %v, want %v", res.LeadingBlock, leading)
	}
}

func TestStrip(t *testing.T) {
	const seal = "X-SmtpQ-Sealed: v1\n YWdl\n"
	tests := []struct {
		name      string
		in        string
		out       string
		removed   []string
		headerEnd bool
		leading   bool
	}{
		{
			name: "first field LF", in: seal + "From: a@example.com\n\nbody\n",
			out: "From: a@example.com\n\nbody\n", removed: []string{seal}, headerEnd: true, leading: true,
		},
		{
			name: "first field CRLF", in: "X-SmtpQ-Sealed: v1\r\n YWdl\r\n ZmFr\r\nFrom: a\r\n\r\nbody\r\n",
			out: "From: a\r\n\r\nbody\r\n", removed: []string{"X-SmtpQ-Sealed: v1\r\n YWdl\r\n ZmFr\r\n"}, headerEnd: true, leading: true,
		},
		{
			name: "middle, folded with tab and space", in: "From: a\r\nX-SmtpQ-Sealed: v1\r\n\tYWdl\r\n ZmFr\r\nTo: b\r\n\r\nbody",
			out: "From: a\r\nTo: b\r\n\r\nbody", removed: []string{"X-SmtpQ-Sealed: v1\r\n\tYWdl\r\n ZmFr\r\n"}, headerEnd: true, leading: false,
		},
		{
			name: "last field", in: "From: a\nTo: b\n" + seal + "\nbody\n",
			out: "From: a\nTo: b\n\nbody\n", removed: []string{seal}, headerEnd: true, leading: false,
		},
		{
			name: "lower-case variant", in: "x-smtpq-sealed: v1\n YWdl\nFrom: a\n\n",
			out: "From: a\n\n", removed: []string{"x-smtpq-sealed: v1\n YWdl\n"}, headerEnd: true, leading: true,
		},
		{
			name: "upper-case variant after a kept field", in: "From: a\nX-SMTPQ-SEALED: v1\n\n",
			out: "From: a\n\n", removed: []string{"X-SMTPQ-SEALED: v1\n"}, headerEnd: true, leading: false,
		},
		{
			name: "white space before the colon", in: "X-SmtpQ-Sealed \t: v1\nFrom: a\n\n",
			out: "From: a\n\n", removed: []string{"X-SmtpQ-Sealed \t: v1\n"}, headerEnd: true, leading: true,
		},
		{
			name: "empty value", in: "X-SmtpQ-Sealed:\nFrom: a\n\n",
			out: "From: a\n\n", removed: []string{"X-SmtpQ-Sealed:\n"}, headerEnd: true, leading: true,
		},
		{
			name: "several, top and bottom", in: seal + "x-smtpq-sealed: v1 Zm9v\nFrom: a\n" + seal + "\nb\n",
			out: "From: a\n\nb\n", removed: []string{seal, "x-smtpq-sealed: v1 Zm9v\n", seal}, headerEnd: true, leading: false,
		},
		{
			name: "in the body it stays", in: "From: a\n\n" + seal + "X-SmtpQ-Sealed: v2\n",
			out: "From: a\n\n" + seal + "X-SmtpQ-Sealed: v2\n", headerEnd: true, leading: true,
		},
		{
			name: "similar names stay",
			in:   "X-SmtpQ-Sealed-Old: a\nX-SmtpQ-Seale: b\nXX-SmtpQ-Sealed: c\nX-SmtpQ-Sealed\n X-SmtpQ-Sealed: d\n\n",
			out:  "X-SmtpQ-Sealed-Old: a\nX-SmtpQ-Seale: b\nXX-SmtpQ-Sealed: c\nX-SmtpQ-Sealed\n X-SmtpQ-Sealed: d\n\n", headerEnd: true, leading: true,
		},
		{
			name: "continuation of a kept field stays", in: "Subject: a\n X-SmtpQ-Sealed: v1\n\n",
			out: "Subject: a\n X-SmtpQ-Sealed: v1\n\n", headerEnd: true, leading: true,
		},
		{
			name: "white-space-only line continues the field", in: "X-SmtpQ-Sealed: v1\n \n\t\r\nFrom: a\n\n",
			out: "From: a\n\n", removed: []string{"X-SmtpQ-Sealed: v1\n \n\t\r\n"}, headerEnd: true, leading: true,
		},
		{
			name: "line without a colon", in: "garbage\nX-SmtpQ-Sealed: v1\n\n",
			out: "garbage\n\n", removed: []string{"X-SmtpQ-Sealed: v1\n"}, headerEnd: true, leading: false,
		},
		{
			name: "leading continuation line", in: " x\nX-SmtpQ-Sealed: v1\n\n",
			out: " x\n\n", removed: []string{"X-SmtpQ-Sealed: v1\n"}, headerEnd: true, leading: true,
		},
		{
			name: "mixed line endings", in: "X-SmtpQ-Sealed: v1\n YWdl\r\nFrom: a\r\nTo: b\n\r\nx\ny\r\n",
			out: "From: a\r\nTo: b\n\r\nx\ny\r\n", removed: []string{"X-SmtpQ-Sealed: v1\n YWdl\r\n"}, headerEnd: true, leading: true,
		},
		{
			name: "no final newline", in: seal + "From: a\n\nlast line",
			out: "From: a\n\nlast line", removed: []string{seal}, headerEnd: true, leading: true,
		},
		{
			name: "header only, with separator", in: seal + "From: a\n\n",
			out: "From: a\n\n", removed: []string{seal}, headerEnd: true, leading: true,
		},
		{
			name: "ends inside the header", in: seal + "From: a\n",
			out: "From: a\n", removed: []string{seal}, headerEnd: false, leading: true,
		},
		{
			name: "ends inside the header without newline", in: seal + "From: a",
			out: "From: a", removed: []string{seal}, headerEnd: false, leading: true,
		},
		{
			name: "ends inside the removed field", in: "From: a\nX-SmtpQ-Sealed: v1\n YWdl",
			out: "From: a\n", removed: []string{"X-SmtpQ-Sealed: v1\n YWdl"}, headerEnd: false, leading: false,
		},
		{
			name: "CR without LF is not a line end", in: "From: a\rX-SmtpQ-Sealed: v1\n\n",
			out: "From: a\rX-SmtpQ-Sealed: v1\n\n", headerEnd: true, leading: true,
		},
		{
			name: "empty input", in: "", out: "", headerEnd: false, leading: true,
		},
		{
			name: "separator only", in: "\r\nX-SmtpQ-Sealed: v1\r\n", out: "\r\nX-SmtpQ-Sealed: v1\r\n", headerEnd: true, leading: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkStrip(t, tc.in, tc.out, tc.removed, tc.headerEnd, tc.leading)
			if tc.in != tc.out && len(tc.removed) == 0 {
				t.Fatal("bad test case: output differs but nothing removed")
			}
			// The oracle agrees, and StripSealed is Strip(IsSealedField).
			if tc.headerEnd && tc.name != "white space before the colon" {
				if got := string(withoutField([]byte(tc.in), queuefile.SealedField)); got != tc.out {
					t.Errorf("oracle: %q", got)
				}
			}
			var buf bytes.Buffer
			if err := queuefile.StripSealed(&buf, strings.NewReader(tc.in)); err != nil || buf.String() != tc.out {
				t.Errorf("StripSealed = %q, %v", buf.String(), err)
			}
		})
	}
}

// TestStripDropCalls: drop gets each field name once, as written, and is not
// asked about continuation lines or the body.
func TestStripDropCalls(t *testing.T) {
	in := "Received: from x\n\tby y\nsubject : hi\nX-A:1\n Not-A-Field: z\nnocolon\n\nBody-Field: b\n"
	var names []string
	var out bytes.Buffer
	res, err := queuefile.Strip(&out, strings.NewReader(in), func(n string) bool {
		names = append(names, n)
		return n == "subject"
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"Received", "subject", "X-A"}; !slices.Equal(names, want) {
		t.Errorf("drop called with %q, want %q", names, want)
	}
	if want := strings.Replace(in, "subject : hi\n", "", 1); out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	if r := removedFields(res.Removed); len(r) != 1 || r[0].Name != "Subject" || r[0].Value != "hi" || string(r[0].Raw) != "subject : hi\n" {
		t.Errorf("removed %+v", r)
	}
	if res.LeadingBlock {
		t.Error("LeadingBlock true for a field after Received")
	}
}

// TestFieldValue: a removed field's value as go-message unfolds it (what
// OpenSeal and the address parsers read), its raw bytes untouched.
func TestFieldValue(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{"X-SmtpQ-Sealed: v1\r\n YWdl\r\n ZmFr\r\n", "v1 YWdl ZmFr"},
		{"X-SmtpQ-Sealed: v1\n\tYWdl\n", "v1 YWdl"},
		{"Bcc: Zelda <z@example.net>,\r\n a@example.com\r\n", "Zelda <z@example.net>, a@example.com"},
		{"Subject:   padded  \n", "padded"},
		{"Subject:\n", ""},
		{"Subject: a:b:c\n", "a:b:c"},
	} {
		res, err := queuefile.Strip(io.Discard, strings.NewReader(tc.raw+"\n"), func(string) bool { return true })
		r := removedFields(res.Removed)
		if err != nil || len(r) != 1 || r[0].Value != tc.want || string(r[0].Raw) != tc.raw {
			t.Errorf("field %q: %+v, %v; want value %q", tc.raw, r, err, tc.want)
		}
	}
}

// TestStripLongLines: lines longer than Strip's 32 KiB read buffer, kept and
// removed, in the header and in the body, and lines whose end falls on a
// buffer boundary (a CR at the end of one chunk and the LF alone in the next
// must not look like the empty line that ends the header).
func TestStripLongLines(t *testing.T) {
	const buf = 32 << 10
	long := func(prefix string, n int, eol string) string {
		return prefix + strings.Repeat("x", n-len(prefix)-len(eol)) + eol
	}
	longSeal := func(n int, eol string) string {
		return queuefile.SealedField + ": v1 " + strings.Repeat("A", n-len(queuefile.SealedField)-5-len(eol)) + eol
	}
	foldedSeal := func(n int) string {
		s := queuefile.SealedField + ": v1\n"
		for len(s) < n {
			s += " " + strings.Repeat("B", 76) + "\n"
		}
		return s
	}
	type tc struct {
		name    string
		in      string
		out     string
		removed []string
	}
	var tests []tc
	tests = append(tests,
		tc{"100 KB header line kept", "From: a\n" + long("X-Long: ", 100_000, "\n") + longSeal(100, "\n") + "\nbody\n",
			"From: a\n" + long("X-Long: ", 100_000, "\n") + "\nbody\n", []string{longSeal(100, "\n")}},
		tc{"100 KB removed field", "From: a\r\n" + longSeal(100_000, "\r\n") + "To: b\r\n\r\nbody\r\n",
			"From: a\r\nTo: b\r\n\r\nbody\r\n", []string{longSeal(100_000, "\r\n")}},
		tc{"100 KB removed field, folded", foldedSeal(100_000) + "To: b\n\nbody\n",
			"To: b\n\nbody\n", []string{foldedSeal(100_000)}},
		tc{"100 KB continuation line of a removed field", "X-SmtpQ-Sealed: v1\n" + long(" ", 100_000, "\n") + "To: b\n\n",
			"To: b\n\n", []string{"X-SmtpQ-Sealed: v1\n" + long(" ", 100_000, "\n")}},
		tc{"100 KB continuation line of a kept field", "To: b\n" + long(" ", 100_000, "\n") + longSeal(80, "\n") + "\n",
			"To: b\n" + long(" ", 100_000, "\n") + "\n", []string{longSeal(80, "\n")}},
		tc{"100 KB body line", longSeal(80, "\n") + "To: b\n\n" + long("", 100_000, "\n") + "X-SmtpQ-Sealed: v1\n",
			"To: b\n\n" + long("", 100_000, "\n") + "X-SmtpQ-Sealed: v1\n", []string{longSeal(80, "\n")}},
		tc{"100 KB header line without newline at the end", "From: a\n" + longSeal(80, "\n") + long("X: ", 100_000, ""),
			"From: a\n" + long("X: ", 100_000, ""), []string{longSeal(80, "\n")}},
		tc{"100 KB removed field at the end of the input", "From: a\n" + longSeal(100_000, ""),
			"From: a\n", []string{longSeal(100_000, "")}},
	)
	for _, n := range []int{buf - 1, buf, buf + 1, buf + 2, 2 * buf, 2*buf + 1} {
		for _, eol := range []string{"\n", "\r\n"} {
			kept := long("X-Long: ", n, eol)
			name := strings.NewReplacer("\r", "CR", "\n", "LF").Replace(eol)
			tests = append(tests,
				tc{"kept line of " + strconv.Itoa(n) + " bytes " + name,
					"From: a" + eol + kept + longSeal(90, eol) + "To: b" + eol + eol + "body" + eol,
					"From: a" + eol + kept + "To: b" + eol + eol + "body" + eol, []string{longSeal(90, eol)}},
				tc{"removed line of " + strconv.Itoa(n) + " bytes " + name,
					"From: a" + eol + longSeal(n, eol) + longSeal(90, eol) + "To: b" + eol + eol + "body" + eol,
					"From: a" + eol + "To: b" + eol + eol + "body" + eol, []string{longSeal(n, eol), longSeal(90, eol)}},
			)
		}
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkStrip(t, tc.in, tc.out, tc.removed, strings.Contains(tc.out, "\n\n") || strings.Contains(tc.out, "\n\r\n"), !strings.HasPrefix(tc.in, "From") && !strings.HasPrefix(tc.in, "To"))
		})
	}
}

// TestStripReaders: the output does not depend on how the reader splits the
// input.
func TestStripReaders(t *testing.T) {
	inputs := []string{
		"X-SmtpQ-Sealed: v1\r\n YWdl\r\nFrom: a\r\n\r\nbody\r\nX-SmtpQ-Sealed: v1\r\n",
		"From: a\nx-smtpq-sealed: v1\n\tYWdl\nTo: b\n\nbody",
		"From: a\n" + strings.Repeat("y", 70_000) + "\nX-SmtpQ-Sealed: v1 " + strings.Repeat("A", 70_000) + "\n\n",
	}
	for i, in := range corpus(t) {
		if i < 3 {
			inputs = append(inputs, string(sealFile(t, in.data, testParams("x@example.com"))))
		}
	}
	wrap := map[string]func(io.Reader) io.Reader{
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data+EOF": iotest.DataErrReader,
	}
	for i, in := range inputs {
		var want bytes.Buffer
		wantRes, err := queuefile.Strip(&want, strings.NewReader(in), queuefile.IsSealedField)
		if err != nil {
			t.Fatal(err)
		}
		if wantRes.Removed.Len() == 0 {
			t.Fatalf("input %d: nothing removed", i)
		}
		for name, w := range wrap {
			var got bytes.Buffer
			res, err := queuefile.Strip(&got, w(strings.NewReader(in)), queuefile.IsSealedField)
			if err != nil {
				t.Fatalf("input %d, %s reader: %v", i, name, err)
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) || res.Removed.Len() != wantRes.Removed.Len() || res.HeaderEnd != wantRes.HeaderEnd {
				t.Errorf("input %d, %s reader: output or result differs", i, name)
			}
		}
	}
}

type errWriter struct {
	n   int // bytes accepted before failing
	err error
}

func (w *errWriter) Write(b []byte) (int, error) {
	if len(b) > w.n {
		n := w.n
		w.n = 0
		return n, w.err
	}
	w.n -= len(b)
	return len(b), nil
}

// TestStripIOErrors: read and write errors come back, in the header and in
// the body.
func TestStripIOErrors(t *testing.T) {
	in := "X-SmtpQ-Sealed: v1\n YWdl\nFrom: a\nTo: b\n\n" + strings.Repeat("body line\n", 10_000)
	boom := errors.New("boom")
	for _, at := range []int{3, 20, 28, 40, len(in) - 1000} {
		// Reader failing after at bytes.
		r := io.MultiReader(strings.NewReader(in[:at]), iotest.ErrReader(boom))
		if _, err := queuefile.Strip(io.Discard, r, queuefile.IsSealedField); !errors.Is(err, boom) {
			t.Errorf("read error after %d bytes: got %v", at, err)
		}
		// Writer failing after at bytes of output.
		if at < len(in)-30 {
			if _, err := queuefile.Strip(&errWriter{n: at - 3, err: boom}, strings.NewReader(in), queuefile.IsSealedField); !errors.Is(err, boom) {
				t.Errorf("write error after %d bytes: got %v", at-3, err)
			}
		}
	}
}

// TestStripFieldTooLong: a removed field may be MaxFieldSize bytes, not more,
// however it is folded; kept fields are not limited.
func TestStripFieldTooLong(t *testing.T) {
	sealOf := func(n int, folded bool) string {
		s := queuefile.SealedField + ": v1\n"
		if !folded {
			return s[:len(s)-1] + " " + strings.Repeat("A", n-len(s)-1) + "\n"
		}
		for len(s)+78 <= n {
			s += " " + strings.Repeat("A", 76) + "\n"
		}
		if rest := n - len(s); rest >= 2 {
			s += " " + strings.Repeat("A", rest-2) + "\n"
		}
		return s
	}
	for _, folded := range []bool{false, true} {
		for _, tc := range []struct {
			size    int
			wantErr bool
		}{
			{queuefile.MaxFieldSize - 1, false},
			{queuefile.MaxFieldSize, false},
			{queuefile.MaxFieldSize + 1, true},
			{2 * queuefile.MaxFieldSize, true},
		} {
			s := sealOf(tc.size, folded)
			if len(s) != tc.size {
				t.Fatalf("bad test field: %d bytes, want %d", len(s), tc.size)
			}
			res, err := queuefile.Strip(io.Discard, strings.NewReader("From: a\n"+s+"\nbody\n"), queuefile.IsSealedField)
			if tc.wantErr {
				if !errors.Is(err, queuefile.ErrFieldTooLong) || !strings.Contains(err.Error(), queuefile.SealedField) {
					t.Errorf("folded=%v, %d bytes: error %v, want ErrFieldTooLong naming the field", folded, tc.size, err)
				}
				continue
			}
			if r := removedFields(res.Removed); err != nil || len(r) != 1 || len(r[0].Raw) != tc.size {
				t.Errorf("folded=%v, %d bytes: %v", folded, tc.size, err)
			}
		}
	}
	// The same size kept is fine.
	kept := "X-Big: " + strings.Repeat("A", 2*queuefile.MaxFieldSize) + "\n"
	var out bytes.Buffer
	if _, err := queuefile.Strip(&out, strings.NewReader(kept+"\nbody"), queuefile.IsSealedField); err != nil || out.String() != kept+"\nbody" {
		t.Errorf("kept big field: %v", err)
	}
}

// repeatReader yields unit n times, without ever holding more than unit.
type repeatReader struct {
	unit []byte
	n    int64
	off  int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	total := 0
	for len(p) > 0 && r.n > 0 {
		c := copy(p, r.unit[r.off:])
		p, total, r.off = p[c:], total+c, r.off+c
		if r.off == len(r.unit) {
			r.off, r.n = 0, r.n-1
		}
	}
	return total, nil
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(b []byte) (int, error) { w.n += int64(len(b)); return len(b), nil }

// TestStripStreams strips a generated 200 MB message (several MB of header
// fields, long lines, a sealed field in the middle, then the body) and checks
// that Strip allocated only a small, fixed amount: it must stream, never hold
// the message. This is a memory bound, not a timing test.
func TestStripStreams(t *testing.T) {
	headerLine := []byte("X-Filler: " + strings.Repeat("h", 60) + "\r\n")
	longLine := []byte("X-Long: " + strings.Repeat("l", 100_000) + "\r\n")
	seal := []byte(queuefile.SealedField + ": v1\r\n" + strings.Repeat(" "+strings.Repeat("S", 76)+"\r\n", 10))
	bodyUnit := bytes.Repeat([]byte(strings.Repeat("b", 78)+"\r\n"), 1000)
	const headerLines, longLines, bodyUnits = 100_000, 10, 2600
	total := int64(len(headerLine)*headerLines+len(longLine)*longLines+len(seal)*2+2) + int64(len(bodyUnit))*bodyUnits
	if total < 200<<20 {
		t.Fatalf("generated message is only %d bytes", total)
	}
	src := io.MultiReader(
		&repeatReader{unit: headerLine, n: headerLines / 2},
		&repeatReader{unit: longLine, n: longLines},
		bytes.NewReader(seal),
		&repeatReader{unit: headerLine, n: headerLines / 2},
		bytes.NewReader(seal),
		strings.NewReader("\r\n"),
		&repeatReader{unit: bodyUnit, n: bodyUnits},
	)
	dst := &countingWriter{}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	res, err := queuefile.Strip(dst, src, queuefile.IsSealedField)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if want := total - int64(2*len(seal)); dst.n != want {
		t.Errorf("wrote %d bytes, want %d", dst.n, want)
	}
	if res.Removed.Len() != 2 || !res.HeaderEnd || res.LeadingBlock {
		t.Errorf("result: %d removed, HeaderEnd %v, LeadingBlock %v", res.Removed.Len(), res.HeaderEnd, res.LeadingBlock)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc >= 8<<20 {
		t.Errorf("stripping %d MB allocated %d bytes, want under 8 MB", total>>20, alloc)
	} else {
		t.Logf("stripping %d MB allocated %d bytes", total>>20, alloc)
	}
}
