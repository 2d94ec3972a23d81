package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// Exit statuses of the sendmail command, from sysexits.h: the programs that
// call sendmail (cron, PHP, mailx, git send-email...) know these.
const (
	// EX_NOINPUT (66) is not used: the message is always standard input.
	exUsage     = 64 // EX_USAGE: the command line is wrong
	exDataErr   = 65 // EX_DATAERR: the message or an address is wrong
	exCantCreat = 73 // EX_CANTCREAT: the queue file cannot be created
	exIOErr     = 74 // EX_IOERR: reading the message failed
	exTempFail  = 75 // EX_TEMPFAIL: try again later (disk full)
	exConfig    = 78 // EX_CONFIG: configuration, keys or default relay missing or wrong
)

const sendmailHelp = `Usage: smtpq sendmail [options] [RECIPIENT...]
       sendmail [options] [RECIPIENT...]   (through a link named sendmail)

Read a message on standard input and queue it through the default_relay
profile of the configuration, like the sendmail command that cron, PHP mail()
and most Unix tools call. Nothing is printed on success (unless -v).

Options (single letters may be grouped, values attached or separate):
  -t             also take the recipients from the To, Cc and Bcc fields
                 (recipients given as arguments are added to them)
  -f ADDR        envelope sender (also -fADDR, -r ADDR); default: the Sender,
                 else the first From address of the message, else the
                 invoking user's login name at sendmail.domain, who is then
                 named in an added From field
  -F NAME        full name: when the message has no From field, add
                 "From: NAME <sender>" at its top
  -i, -oi        a line with only "." does not end the message (without -i it
                 does, as with sendmail; with or without, end of input does)
  -v             print the queued file's path
  -C FILE, --config FILE
                 configuration file (default: $SMTPQ_CONFIG, else
                 /etc/smtpq/smtpq.yaml)
  -bm            deliver mail (the default mode)
  -bp            list the queue (as mailq); -bi: nothing to do (as newaliases)
Bare local names ("root", "From: root (Cron Daemon)") are qualified with
sendmail.domain (default: the host name), recipients through sendmail.aliases
(root: ops@example.org) first, in the envelope and in the address fields.
Accepted and ignored: -o<option> (-odi, -oem, -om ...), -O option=value,
  -B type, -N dsn, -R ret, -V envid, -L tag, -h hops, -p proto, -X file,
  -G, -U, -m, -n.
Bcc fields are always removed from the queued message. Other options are an
error.

Exit status (sysexits.h): 0 queued, 64 command-line error, 65 bad message or
address, 73 queue file cannot be created, 74 error reading the message,
75 temporary failure (disk full), 78 configuration error (no config,
no default_relay, no public key).
`

func newSendmailCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "sendmail [options] [RECIPIENT...]",
		Short: "Queue a message from standard input, as the sendmail command does (sendmail-compatible options)",
		Long:  sendmailHelp,
		// sendmail's options (-oi, -odi, -fADDR, -ti) are not POSIX/GNU
		// style; they are parsed by hand.
		DisableFlagParsing: true,
		Args:               cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			err := runSendmail(cmd, args)
			var ee *cli.ExitError
			if errors.As(err, &ee) {
				return cli.WithCode(ee.Code, fmt.Errorf("sendmail: %w", ee.Err))
			}
			return err
		},
	}
}

// sendmailOpts is the parsed command line.
type sendmailOpts struct {
	config     string
	from       string // envelope sender; "" means from the message
	fullName   string
	hasName    bool
	extract    bool // -t
	ignoreDots bool // -i, -oi
	verbose    bool
	help       bool
	rcpts      []string
}

// Option letters that take a value, attached (-fADDR) or as the next argument.
const sendmailValueOpts = "BCFLNORVXbfhopr"

func parseSendmailArgs(args []string) (*sendmailOpts, error) {
	o := &sendmailOpts{}
	var rcptArgs []string
	usage := func(format string, a ...any) error { return cli.WithCode(exUsage, fmt.Errorf(format, a...)) }
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			rcptArgs = append(rcptArgs, args[i+1:]...)
			i = len(args)
			continue
		case a == "--help":
			o.help = true
			continue
		case a == "--config" || strings.HasPrefix(a, "--config="):
			if v, ok := strings.CutPrefix(a, "--config="); ok {
				o.config = v
			} else if i+1 < len(args) {
				i++
				o.config = args[i]
			} else {
				return nil, usage("option --config needs a value")
			}
			if o.config == "" {
				return nil, usage("option --config: empty file name")
			}
			continue
		case strings.HasPrefix(a, "--"):
			return nil, usage("unknown option %s", cli.QuoteIfNeeded(a))
		case a == "-":
			return nil, usage("unexpected argument \"-\" (the message is always read from standard input)")
		case !strings.HasPrefix(a, "-"):
			rcptArgs = append(rcptArgs, a)
			continue
		}
		// A group of single-letter options: -ti, -oi, -fADDR, -f ADDR.
		for j := 1; j < len(a); j++ {
			c := a[j]
			if strings.IndexByte(sendmailValueOpts, c) >= 0 {
				v := a[j+1:]
				if v == "" {
					if i+1 >= len(args) {
						return nil, usage("option -%c needs a value", c)
					}
					i++
					v = args[i]
				}
				if err := o.setValue(c, v); err != nil {
					return nil, err
				}
				break
			}
			switch c {
			case 't':
				o.extract = true
			case 'i':
				o.ignoreDots = true
			case 'v':
				o.verbose = true
			case 'G', 'U', 'm', 'n':
				// Gateway/initial submission, "me too", no aliasing: no meaning here.
			case 'q':
				return nil, usage("option -q (queue run) is not supported: the smtpq service runs the queue")
			default:
				if c < 0x21 || c > 0x7e {
					return nil, usage("unknown option in %s", cli.QuoteIfNeeded(a))
				}
				return nil, usage("unknown option -%c", c)
			}
		}
	}
	for _, a := range rcptArgs {
		list, err := parseRecipientArg(a)
		if err != nil {
			return nil, cli.WithCode(exDataErr, err)
		}
		o.rcpts = appendUnique(o.rcpts, list...)
	}
	return o, nil
}

// setValue applies an option that takes a value.
func (o *sendmailOpts) setValue(c byte, v string) error {
	switch c {
	case 'C':
		o.config = v
	case 'f', 'r':
		addr := strings.TrimSpace(v)
		if strings.HasPrefix(addr, "<") && strings.HasSuffix(addr, ">") {
			addr = strings.TrimSpace(addr[1 : len(addr)-1])
		}
		if addr == "" {
			return cli.WithCode(exUsage, fmt.Errorf("-%c: the null sender <> is not supported", c))
		}
		if !localName.MatchString(addr) { // a bare name is qualified later
			if err := queuefile.CheckAddress(addr); err != nil {
				return cli.WithCode(exDataErr, fmt.Errorf("sender: %w", err))
			}
		}
		o.from = addr
	case 'F':
		if strings.ContainsAny(v, "\r\n\x00") {
			return cli.WithCode(exUsage, errors.New("-F: the full name contains a line break or NUL character"))
		}
		if len(v) > 256 {
			return cli.WithCode(exUsage, errors.New("-F: the full name is longer than 256 bytes"))
		}
		o.fullName, o.hasName = strings.TrimSpace(v), true
	case 'b':
		if v != "m" {
			return cli.WithCode(exUsage, fmt.Errorf("mode -b%s is not supported: smtpq sendmail only queues a message (-bm)", v))
		}
	case 'o':
		// Old-style -oX options: -oi is IgnoreDots; the rest (-odi, -oem,
		// -om, -oL9 ...) set delivery or error modes that do not apply.
		if v == "i" {
			o.ignoreDots = true
		}
	case 'O':
		name, val, _ := strings.Cut(v, "=")
		if strings.EqualFold(strings.TrimSpace(name), "IgnoreDots") {
			val = strings.ToLower(strings.TrimSpace(val))
			o.ignoreDots = val == "" || val == "true" || val == "t" || val == "yes" || val == "y"
		}
	default:
		// -B type, -N dsn, -R ret, -V envid, -L tag, -h hops, -p proto,
		// -X logfile: accepted and ignored.
	}
	return nil
}

// parseRecipientArg parses one recipient argument: an address, or a list
// ("a@x, Name <b@y>") as sendmail accepts.
func parseRecipientArg(a string) ([]string, error) {
	if strings.ContainsAny(a, "\r\n") {
		return nil, fmt.Errorf("recipient: %w", queuefile.CheckAddress(a))
	}
	if b := strings.TrimSpace(a); localName.MatchString(b) {
		return []string{b}, nil // a bare name: qualified once the configuration is read
	}
	if list, err := parseAddressList(a); err == nil {
		if len(list) == 0 {
			return nil, fmt.Errorf("recipient %s: no address", cli.QuoteIfNeeded(a))
		}
		for _, addr := range list {
			if err := queuefile.CheckAddress(addr); err != nil {
				return nil, fmt.Errorf("recipient: %w", err)
			}
		}
		return list, nil
	}
	addr := strings.TrimSpace(a)
	if err := queuefile.CheckAddress(addr); err != nil {
		return nil, fmt.Errorf("recipient: %w", err)
	}
	return []string{addr}, nil
}

func runSendmail(cmd *cobra.Command, args []string) error {
	o, err := parseSendmailArgs(args)
	if err != nil {
		return err
	}
	if o.help {
		_, err := io.WriteString(cmd.OutOrStdout(), sendmailHelp)
		return err
	}
	if !o.extract && len(o.rcpts) == 0 {
		return cli.WithCode(exUsage, errors.New("no recipients: give addresses or -t"))
	}
	cfg, err := loadConfig(pipeline.ConfigPath(o.config))
	if err != nil {
		return cli.WithCode(exConfig, err)
	}
	if cfg.DefaultRelay == "" {
		return cli.WithCode(exConfig, fmt.Errorf("no default_relay in %s: sendmail sends through the default relay profile", cfg.Path))
	}
	q, closeQueue, err := producerQueue(cfg)
	if err != nil {
		return cli.WithCode(exConfig, err)
	}
	defer closeQueue()

	in := &messageReader{r: bufio.NewReaderSize(cmd.InOrStdin(), 32<<10), ignoreDots: o.ignoreDots, bol: true}
	br := bufio.NewReaderSize(in, 32<<10)
	hdr, complete, err := readHeader(br)
	if err != nil {
		if in.err != nil {
			return cli.WithCode(exIOErr, fmt.Errorf("reading the message: %w", in.err))
		}
		return cli.WithCode(exDataErr, err)
	}
	names := newLocalNames(cfg)
	var rcpts []string
	for _, r := range o.rcpts {
		rcpts = appendUnique(rcpts, names.qualify(r)...)
	}
	o.rcpts = rcpts
	o.from = names.domainOnly(o.from)
	m, err := prepareMessage(hdr, complete, o, names)
	if err != nil {
		return cli.WithCode(exDataErr, err)
	}
	p := queuefile.Params{Relay: cfg.DefaultRelay, From: m.from, To: m.to}
	if err := p.Validate(); err != nil {
		return cli.WithCode(exDataErr, err)
	}
	name, err := q.Enqueue(io.MultiReader(bytes.NewReader(m.header), br), p)
	if err != nil {
		err = cli.OneLine(err)
		switch {
		case in.err != nil:
			return cli.WithCode(exIOErr, fmt.Errorf("reading the message: %w", in.err))
		case errors.Is(err, queuefile.ErrDuplicateSeal), errors.Is(err, queuefile.ErrNoRecipients),
			errors.Is(err, queuefile.ErrNoSeparator), errors.Is(err, queuefile.ErrFieldTooLong),
			errors.Is(err, queuefile.ErrSealTooLarge), errors.Is(err, queuefile.ErrNotUTF8):
			return cli.WithCode(exDataErr, err)
		case errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT):
			return cli.WithCode(exTempFail, err)
		default:
			return cli.WithCode(exCantCreat, err)
		}
	}
	if o.verbose {
		fmt.Fprintf(cmd.OutOrStdout(), "queued %s\n", filepath.Join(q.Dir, name))
	}
	return nil
}

// preparedMessage is the header section as it will be queued, and the
// envelope.
type preparedMessage struct {
	header []byte
	from   string
	to     []string
}

// maxHeader leaves room below queuefile.MaxHeaderSection for a From field
// added by -F.
const maxHeader = queuefile.MaxHeaderSection - 4<<10

// readHeader reads the header section, up to and including the empty line
// that ends it. complete is false when the input ended first.
func readHeader(br *bufio.Reader) (hdr []byte, complete bool, err error) {
	for {
		line, err := br.ReadSlice('\n')
		hdr = append(hdr, line...)
		if len(hdr) > maxHeader {
			return nil, false, fmt.Errorf("header section longer than %d bytes", maxHeader)
		}
		switch {
		case err == bufio.ErrBufferFull:
			for err == bufio.ErrBufferFull { // the rest of a long line
				line, err = br.ReadSlice('\n')
				hdr = append(hdr, line...)
				if len(hdr) > maxHeader {
					return nil, false, fmt.Errorf("header section longer than %d bytes", maxHeader)
				}
			}
			if err == io.EOF {
				return hdr, false, nil
			}
			if err != nil {
				return nil, false, err
			}
		case err == io.EOF:
			return hdr, false, nil
		case err != nil:
			return nil, false, err
		case isBlankLine(line):
			return hdr, true, nil
		}
	}
}

func isBlankLine(b []byte) bool { return string(b) == "\n" || string(b) == "\r\n" }

// prepareMessage checks the header section, completes it when the input ended
// inside it (a message of header fields only is valid), removes Bcc fields,
// adds From for -F, and works out the envelope.
func prepareMessage(hdr []byte, complete bool, o *sendmailOpts, names *localNames) (*preparedMessage, error) {
	// A leading mbox "From " line (Unix From_ line) is not part of the message.
	if bytes.HasPrefix(hdr, []byte("From ")) {
		if i := bytes.IndexByte(hdr, '\n'); i >= 0 {
			hdr = hdr[i+1:]
		} else {
			hdr = nil
		}
	}
	if len(hdr) == 0 {
		return nil, errors.New("empty message")
	}
	eol := "\n"
	if i := bytes.IndexByte(hdr, '\n'); i > 0 && hdr[i-1] == '\r' {
		eol = "\r\n"
	}
	if !complete {
		hdr = bytes.Clone(hdr)
		if hdr[len(hdr)-1] != '\n' {
			hdr = append(hdr, eol...)
		}
		hdr = append(hdr, eol...)
	}
	lines := bytes.SplitAfter(hdr, []byte("\n"))
	for n, line := range lines {
		switch {
		case len(line) == 0 || isBlankLine(line):
			if n == 0 {
				return nil, errors.New("the message has no header fields (it starts with an empty line)")
			}
		case line[0] == ' ' || line[0] == '\t':
			if n == 0 {
				return nil, errors.New("the message starts with a continuation line")
			}
		default:
			if !isFieldLine(line) {
				return nil, fmt.Errorf("line %d is neither a header field nor the empty line that ends the header: %.40q", n+1, strings.TrimRight(string(line), "\r\n"))
			}
		}
	}

	h, err := queuefile.ParseHeader(hdr)
	if err != nil {
		return nil, err
	}
	var fields []headerField
	for fs := h.Fields(); fs.Next(); {
		raw, _ := fs.Raw() // fields read from the message have their bytes
		fields = append(fields, headerField{key: fs.Key(), value: fs.Value(), raw: raw})
	}
	m := &preparedMessage{}
	// Address fields with bare names are read, and written back, with the
	// names qualified: "From: root (Cron Daemon)" is sent as
	// "From: Cron Daemon <root@domain>".
	rewritten := map[int][]byte{}
	// addrs returns a field's addresses, bare names left bare for the
	// envelope to qualify (recipients through the aliases).
	addrs := func(i int, f headerField) ([]string, error) {
		list, err := parseAddressList(f.value)
		if err == nil {
			return list, nil
		}
		items, ok := parseBareList(f.value)
		if !ok {
			return nil, err
		}
		var out, shown []string
		for _, b := range items {
			out = append(out, b.addr)
			shown = append(shown, formatMailbox(b.name, names.domainOnly(b.addr)))
		}
		if rewritten[i], err = queuefile.FormatField(f.key, strings.Join(shown, ", "), eol); err != nil {
			return nil, fmt.Errorf("%s field: %w", f.key, err)
		}
		return out, nil
	}

	// Envelope recipients: the arguments, plus with -t the To, Cc and Bcc
	// addresses.
	m.to = append(m.to, o.rcpts...)
	for i, f := range fields {
		if !isField(f, "To", "Cc", "Bcc") {
			continue
		}
		list, err := addrs(i, f)
		if !o.extract {
			continue // the header is qualified all the same
		}
		if err != nil {
			return nil, fmt.Errorf("%s field: %v", f.key, err)
		}
		for _, a := range list {
			for _, q := range names.qualify(a) {
				if err := queuefile.CheckAddress(q); err != nil {
					return nil, fmt.Errorf("%s field: %w", f.key, err)
				}
				m.to = appendUnique(m.to, q)
			}
		}
	}
	if len(m.to) == 0 {
		return nil, fmt.Errorf("%w: none given and no address in the To, Cc or Bcc fields", queuefile.ErrNoRecipients)
	}

	// Envelope sender: -f, else Sender, else the first From address.
	m.from = o.from
	hasFrom := false
	for _, want := range []string{"Sender", "From"} {
		for i, f := range fields {
			if !isField(f, want) {
				continue
			}
			if want == "From" {
				hasFrom = true
			}
			list, err := addrs(i, f)
			if m.from != "" {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("%s field: %v", f.key, err)
			}
			if len(list) > 0 {
				m.from = names.domainOnly(list[0])
			}
		}
	}
	derived := false
	if m.from == "" {
		// No -f, Sender or From: the invoking user, as sendmail does, who
		// is then named in a From field too.
		if m.from, err = names.sender(); err != nil {
			return nil, err
		}
		derived = true
	}

	// Bcc fields never reach the recipients; the other fields are written
	// as they came, or qualified.
	var out bytes.Buffer
	if !hasFrom && (o.hasName || derived) {
		from, err := queuefile.FormatField("From", formatMailbox(o.fullName, m.from), eol)
		if err != nil {
			return nil, fmt.Errorf("From field: %w", err)
		}
		out.Write(from)
	}
	for i, f := range fields {
		switch r, ok := rewritten[i]; {
		case isField(f, "Bcc"):
		case ok:
			out.Write(r)
		default:
			out.Write(f.raw)
		}
	}
	out.Write(headerEnd(hdr))
	m.header = out.Bytes()
	return m, nil
}

// headerField is one field of the header being prepared, as go-message
// read it.
type headerField struct {
	key, value string // canonical name, unfolded value
	raw        []byte // as written
}

func isField(f headerField, names ...string) bool {
	for _, n := range names {
		if strings.EqualFold(f.key, n) {
			return true
		}
	}
	return false
}

// headerEnd returns the empty line that ends hdr ("\r\n" or "\n").
func headerEnd(hdr []byte) []byte {
	if bytes.HasSuffix(hdr, []byte("\n\r\n")) {
		return []byte("\r\n")
	}
	return []byte("\n")
}

// isFieldLine reports whether line starts a header field: a name of printable
// ASCII characters other than the colon, then a colon (white space before the
// colon is obsolete syntax that is still accepted).
func isFieldLine(line []byte) bool {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return false
	}
	name := bytes.TrimRight(line[:i], " \t")
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c <= ' ' || c >= 127 {
			return false
		}
	}
	return true
}

func appendUnique(list []string, add ...string) []string {
	for _, a := range add {
		dup := false
		for _, b := range list {
			if strings.EqualFold(a, b) {
				dup = true
				break
			}
		}
		if !dup {
			list = append(list, a)
		}
	}
	return list
}

// messageReader reads the message from standard input. Without ignoreDots a
// line holding only "." ends the message, as with sendmail without -i. It
// keeps the first read error so that the caller can tell an I/O failure
// (EX_IOERR) from a bad message.
type messageReader struct {
	r          *bufio.Reader
	ignoreDots bool
	bol        bool   // at the beginning of a line
	pending    []byte // the rest of the current chunk
	done       bool
	err        error
}

func (m *messageReader) Read(p []byte) (int, error) {
	if m.ignoreDots && len(m.pending) == 0 && !m.done {
		n, err := m.r.Read(p)
		if err != nil && err != io.EOF {
			m.err = err
		}
		return n, err
	}
	for len(m.pending) == 0 {
		if m.done {
			if m.err != nil {
				return 0, m.err
			}
			return 0, io.EOF
		}
		chunk, err := m.r.ReadSlice('\n')
		atStart := m.bol
		m.bol = err == nil
		switch {
		case err == nil, err == bufio.ErrBufferFull:
		case err == io.EOF:
			m.done = true
		default:
			m.done, m.err = true, err
		}
		if !m.ignoreDots && atStart && (string(chunk) == ".\n" || string(chunk) == ".\r\n" || err == io.EOF && string(chunk) == ".") {
			m.done = true
			return 0, io.EOF
		}
		m.pending = chunk
	}
	n := copy(p, m.pending)
	m.pending = m.pending[n:]
	return n, nil
}
