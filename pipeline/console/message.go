package console

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// Bounds of what the message page reads of a file.
const (
	maxHeaderRead = 256 << 10 // the header section
	maxPreview    = 16 << 10  // the text shown of the body
	maxBodyRead   = 1 << 20   // the body read to find the text part
)

func parseXMLLog(b []byte) (*stages.XMLLog, error) {
	var l stages.XMLLog
	if err := xml.Unmarshal(b, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// content is what the message page shows of a file's bytes.
type content struct {
	headers []Header
	subject string
	body    string
	cut     bool
}

// readContent reads the header fields (the sealed parameters left out:
// the seal is shown as its size only) and a text preview of the body of
// the message file at path. The file must be a regular file (no link is
// followed: see openRegular).
func readContent(path string) (content, error) {
	f, err := openRegular(path)
	if err != nil {
		return content{}, err
	}
	defer f.Close()
	r := bufio.NewReader(io.LimitReader(f, maxHeaderRead+maxBodyRead))
	tp := textproto.NewReader(bufio.NewReader(io.LimitReader(r, maxHeaderRead)))
	h, err := tp.ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return content{}, fmt.Errorf("reading the header: %w", err)
	}
	var c content
	dec := new(mime.WordDecoder)
	for _, name := range headerOrder(path) {
		for _, v := range h.Values(name) {
			if strings.EqualFold(name, queuefile.SealedField) {
				v = fmt.Sprintf("[sealed parameters, %d bytes]", len(v))
			} else if d, err := dec.DecodeHeader(v); err == nil {
				v = d
			}
			c.headers = append(c.headers, Header{Name: name, Value: clipText(v, 4096)})
		}
	}
	if s, err := dec.DecodeHeader(h.Get("Subject")); err == nil {
		c.subject = s
	}
	body, _ := io.ReadAll(io.MultiReader(tp.R, r))
	c.body, c.cut = preview(mail.Header(h), body)
	return c, nil
}

// headerOrder returns the header field names of the file in the order they
// first appear (textproto's map has none).
func headerOrder(path string) []string {
	f, err := openRegular(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var names []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(io.LimitReader(f, maxHeaderRead))
	sc.Buffer(make([]byte, 64<<10), maxHeaderRead)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line == "\r" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue
		}
		name, _, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		name = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name))
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	return names
}

// preview returns the text of the message (its first text/plain part,
// decoded), cut at maxPreview. HTML is shown as its source text: the page
// escapes it and never renders it.
func preview(h mail.Header, body []byte) (string, bool) {
	text := textPart(h.Get("Content-Type"), h.Get("Content-Transfer-Encoding"), body, 0)
	text = strings.ToValidUTF8(text, "\uFFFD")
	if len(text) > maxPreview {
		return clipText(text, maxPreview), true
	}
	return text, false
}

// textPart finds the first text part of a (possibly multipart) body.
func textPart(ctype, cte string, body []byte, depth int) string {
	mt, params, err := mime.ParseMediaType(ctype)
	if err != nil || ctype == "" {
		mt = "text/plain"
	}
	if strings.HasPrefix(mt, "multipart/") && params["boundary"] != "" && depth < 5 {
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		var first string
		for {
			p, err := mr.NextRawPart()
			if err != nil {
				break
			}
			b, _ := io.ReadAll(io.LimitReader(p, maxBodyRead))
			t := textPart(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), b, depth+1)
			pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
			if pt == "text/plain" || pt == "" {
				return t
			}
			if first == "" {
				first = t
			}
		}
		return first
	}
	if !strings.HasPrefix(mt, "text/") {
		return fmt.Sprintf("[%s part, %d bytes, not shown]", mt, len(body))
	}
	return string(decodeCTE(cte, body))
}

func decodeCTE(cte string, b []byte) []byte {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "base64":
		out, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, bytes.NewReader(bytes.Join(bytes.Fields(b), nil))))
		if err == nil || len(out) > 0 {
			return out
		}
	case "quoted-printable":
		out, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(b)))
		if err == nil || len(out) > 0 {
			return out
		}
	}
	return b
}

// clipText cuts s to at most n bytes on a character boundary.
func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}

// openRegular opens path for reading if it is a regular file, never
// following a symbolic link at its end (a link is refused). The folders
// above it are the service's configured folders.
func openRegular(path string) (*os.File, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", fi.Name())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if fi2, err := f.Stat(); err != nil || !os.SameFile(fi, fi2) {
		f.Close()
		return nil, errors.New("the file changed while it was opened")
	}
	return f, nil
}
