package console

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message/textproto"

	"github.com/emersion/go-message"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// Bounds of what the message page reads of a file.
const (
	maxHeaderRead = 256 << 10 // the header section
	maxPreview    = 16 << 10  // the text shown of the body
	maxBodyRead   = 1 << 20   // the body read to find the text part

	maxHeaderFields = 500 // the fields listed; the rest are counted
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

// readContent reads the header fields (the sealed parameters and their
// padding shown as their size only; the first maxHeaderFields, the rest
// counted) and a text preview of the body of the
// message file at path. The file must be a regular file (no link is
// followed: see openRegular).
func readContent(path string) (content, error) {
	h, body, err := readMessage(path, maxBodyRead)
	if err != nil {
		return content{}, err
	}
	var c content
	n := 0
	for fs := h.Fields(); fs.Next(); n++ {
		if n >= maxHeaderFields {
			continue
		}
		v := fs.Value()
		if queuefile.IsSealedField(fs.Key()) {
			raw, _ := fs.Raw()
			v = fmt.Sprintf("[sealed parameters, %d bytes]", len(raw))
		} else {
			v = decodeWords(v)
		}
		c.headers = append(c.headers, Header{Name: fs.Key(), Value: clipText(v, 4096)})
	}
	if n > maxHeaderFields {
		c.headers = append(c.headers, Header{Name: "…", Value: fmt.Sprintf("[%d more fields not shown]", n-maxHeaderFields)})
	}
	c.subject = decodeWords(h.Get("Subject"))
	c.body, c.cut = preview(h.Get("Content-Type"), h.Get("Content-Transfer-Encoding"), body)
	return c, nil
}

// readSubject reads only the header section of the message file at path
// and returns its decoded Subject.
func readSubject(path string) (string, error) {
	h, _, err := readMessage(path, 0)
	return decodeWords(h.Get("Subject")), err
}

// readMessage reads the message file at path with go-message's header
// reader, as the service reads it (queuefile.Strip): every header field in
// order, from at most maxHeaderRead bytes, and at most bodyMax bytes of the
// body after it.
func readMessage(path string, bodyMax int64) (textproto.Header, []byte, error) {
	f, err := openRegular(path)
	if err != nil {
		return textproto.Header{}, nil, err
	}
	defer f.Close()
	var rest bytes.Buffer // lines that are not fields, the empty line, the body
	res, err := queuefile.Strip(&rest, io.LimitReader(f, maxHeaderRead+bodyMax), func(string) bool { return true })
	if err != nil {
		return textproto.Header{}, nil, fmt.Errorf("reading the header: %w", err)
	}
	body := rest.Bytes()
	if i := bytes.Index(body, []byte("\n")); res.HeaderEnd && i >= 0 {
		body = body[i+1:] // from after the empty line that ends the header
	}
	return res.Removed, body, nil
}

// decodeWords decodes the RFC 2047 words of a field value in every charset
// go-message knows; a value it cannot decode is shown as written.
func decodeWords(v string) string {
	dec := mime.WordDecoder{CharsetReader: message.CharsetReader}
	if d, err := dec.DecodeHeader(v); err == nil {
		return d
	}
	return v
}

// preview returns the text of the message (its first text/plain part,
// decoded), cut at maxPreview. HTML is shown as its source text: the page
// escapes it and never renders it.
func preview(ctype, cte string, body []byte) (string, bool) {
	text := textPart(ctype, cte, body, 0)
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

// clipText cuts s to at most n bytes on a character boundary (stepping
// back at most a character's length, so a byte that is not UTF-8 before
// the cut is kept, and the page's template escapes it).
func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
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
