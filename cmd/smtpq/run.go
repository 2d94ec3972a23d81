package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/service"
	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/queuefile"
)

func newRunCmd() *cobra.Command {
	var initFirst bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the service in the foreground until SIGINT or SIGTERM",
		Long: `Run the service in the foreground: pick up queued files, send them, file the
results. SIGINT or SIGTERM stops taking work, lets sessions in progress finish
(up to 30s), returns the rest to the queue and exits 0.

With --init, missing folders and keys are created first (as on the first
"make run"), their locations printed, and a command that enqueues a test
message from standard input (for a POSIX shell, on Windows for PowerShell;
it works from any folder).

Exit status: 0 after a stop by SIGINT or SIGTERM, also one that arrives while
the service is still starting; 1 if it cannot start (configuration, keys,
folders); 2 for a mistake in the command line.`,
		Args: usageArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			// SIGINT and SIGTERM are taken from the start, so that one that
			// arrives during start-up (Ctrl-C right after "make run") stops
			// the service as cleanly, with status 0, instead of killing it.
			// A service manager's stop request is handled by internal/service.
			managed := service.UnderManager()
			ctx := context.Background()
			if !managed {
				var stop context.CancelFunc
				ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
				defer stop()
			}
			cfg, err := loadConfig(configFlag(cmd))
			if err != nil {
				return err
			}
			if initFirst {
				if err := initSpool(cmd, cfg); err != nil {
					return err
				}
			}
			tuneGC()
			if stop, err := cpuProfile(os.Getenv("SMTPQ_CPUPROFILE")); err != nil {
				return err
			} else {
				defer stop()
			}
			log, level, closeLog, err := newLogger(cfg)
			if err != nil {
				return err
			}
			defer closeLog()
			p, err := pipeline.New(cfg, service.PipelineOptions(crashOptions(pipeline.Options{Logger: log, Version: version})))
			if err != nil {
				return err
			}
			serve := func(ctx context.Context) error {
				stopReload := reloadOnHangup(ctx, cfg.Path, p, level, log)
				defer stopReload()
				return p.Run(ctx)
			}
			if managed {
				return service.RunUnderManager(serve, log)
			}
			return serve(ctx)
		},
	}
	cmd.Flags().BoolVar(&initFirst, "init", false, "create missing folders and keys first, and print where they are")
	return cmd
}

// cpuProfile writes a CPU profile of the whole run to path, if set (the
// SMTPQ_CPUPROFILE environment variable: for developers, see
// testdata/bench/README.md); the returned function ends it.
func cpuProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("SMTPQ_CPUPROFILE: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("SMTPQ_CPUPROFILE: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// tuneGC trades a little memory for less garbage collection: each message
// allocates tens of kilobytes that die at once (its seal opened, its body
// read, more for a seal opened by age.Decrypt), so with the default GOGC
// the collector runs every few messages. A soft memory limit keeps the heap
// well under the 200 MB target anyway.
// GOGC and GOMEMLIMIT in the environment still win.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(128 << 20)
	}
}

// initSpool creates the configured folders and, if neither exists, the key
// pair, and prints where everything is.
func initSpool(cmd *cobra.Command, cfg *pipeline.Config) error {
	out := cmd.OutOrStdout()
	for _, d := range []string{cfg.QueueDir, cfg.SentDir, cfg.UndeliverableDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return err
		}
	}
	if len(cfg.IdentityFile) > 0 && cfg.RecipientFile != "" {
		_, err1 := os.Stat(cfg.IdentityFile[0])
		_, err2 := os.Stat(cfg.RecipientFile)
		if errors.Is(err1, fs.ErrNotExist) && errors.Is(err2, fs.ErrNotExist) {
			if _, err := queuefile.GenerateKeys(cfg.IdentityFile[0], cfg.RecipientFile); err != nil {
				return err
			}
			fmt.Fprintf(out, "created key pair: %s (private), %s (public)\n", cfg.IdentityFile[0], cfg.RecipientFile)
		}
	}
	fmt.Fprintf(out, "config:        %s\nqueue:         %s\nsent:          %s\nundeliverable: %s\n",
		cfg.Path, cfg.QueueDir, cfg.SentDir, cfg.UndeliverableDir)
	if cfg.DefaultRelay != "" {
		r := cfg.Relays[cfg.DefaultRelay]
		fmt.Fprintf(out, "default relay: %s (%s:%d)\n", cfg.DefaultRelay, r.Host, r.Port)
	}
	fmt.Fprintf(out, "enqueue a test message: %s\n", exampleEnqueue(cfg, selfCommand(), runtime.GOOS))
	return nil
}

// exampleEnqueue is the test command that --init prints, running self: a
// command line that works from any folder (no file of the checkout), with
// the message on standard input. On Windows it is for PowerShell, the
// shell the README's Windows steps use: cmd.exe cannot pipe an empty line
// (a piped "(echo ...)" block gets a space added after each echo, and the
// line between header and body must be empty). Elsewhere it is for a POSIX
// shell.
func exampleEnqueue(cfg *pipeline.Config, self, goos string) string {
	quote := shellQuote
	if goos == "windows" {
		quote = powerShellQuote
	}
	args := []string{quote(self), "enqueue", "--config", quote(cfg.Path)}
	switch {
	case cfg.DefaultRelay != "":
	case len(cfg.Relays) > 0:
		names := make([]string, 0, len(cfg.Relays))
		for n := range cfg.Relays {
			names = append(names, n)
		}
		sort.Strings(names)
		args = append(args, "--relay", quote(names[0]))
	default:
		args = append(args, "--host", "smtp.example.com")
	}
	command := strings.Join(append(args, "-"), " ")
	if goos == "windows" {
		// PowerShell writes each string to the program's standard input
		// as a line (CRLF on Windows); '' is the empty line.
		return "'From: you@example.org', 'To: you@example.org', 'Subject: hello from smtpq', '', 'hello' | & " + command
	}
	return `printf 'From: you@example.org\r\nTo: you@example.org\r\nSubject: hello from smtpq\r\n\r\nhello\r\n' | ` + command
}

// powerShellQuote quotes s for PowerShell if it needs it: in single
// quotes nothing is special but the single quote, written twice.
func powerShellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/\\") == "" && s[0] != '-' {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// selfCommand is how a shell in any folder runs this executable: the name
// it was started by if that was found through PATH, else an absolute path
// ("make run" starts bin/smtpq, relative to the checkout).
func selfCommand() string {
	arg0 := os.Args[0]
	if !strings.ContainsAny(arg0, `/\`) {
		if _, err := exec.LookPath(arg0); err == nil {
			return arg0
		}
	} else if abs, err := filepath.Abs(arg0); err == nil {
		return abs
	}
	if exe, err := os.Executable(); err == nil {
		return exe
	}
	return arg0
}

// shellQuote quotes s for a POSIX shell if it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./_-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// newLogger builds the service's logger from the log section: level,
// console or JSON, and optionally a copy in log.dir/smtpq.log.
func newLogger(cfg *pipeline.Config) (*zap.Logger, zap.AtomicLevel, func(), error) {
	var (
		enc  zapcore.Encoder
		opts = []zap.Option{zap.AddCaller()}
	)
	if cfg.Log.Format == "json" {
		enc = zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
		opts = append(opts, zap.AddStacktrace(zapcore.ErrorLevel))
	} else {
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	}
	lvl, err := zapcore.ParseLevel(cfg.Log.Level)
	if err != nil {
		return nil, zap.AtomicLevel{}, nil, fmt.Errorf("log.level: %w", err)
	}
	level := zap.NewAtomicLevelAt(lvl)
	var paths []string
	if cfg.Log.Dir == "" || hasStderr() {
		paths = append(paths, "stderr")
	}
	if cfg.Log.Dir != "" {
		if err := os.MkdirAll(cfg.Log.Dir, 0o750); err != nil {
			return nil, zap.AtomicLevel{}, nil, fmt.Errorf("log.dir: %w", err)
		}
		paths = append(paths, filepath.Join(cfg.Log.Dir, "smtpq.log"))
	}
	out, closeOut, err := zap.Open(paths...)
	if err != nil {
		return nil, zap.AtomicLevel{}, nil, err
	}
	// A line per message is a write per message: the Archiver's info lines
	// (one per message filed) are buffered and written at least every
	// logFlush, and at the end; any other line is written at once, with
	// whatever was buffered before it. A crash may lose the last logFlush
	// of per-message lines; what happened to each message is on disk in
	// the spool regardless.
	buf := &zapcore.BufferedWriteSyncer{WS: flushOnly{out}, Size: 256 << 10, FlushInterval: logFlush}
	core := zapcore.NewCore(enc, buf, level)
	opts = append(opts, zap.ErrorOutput(out), zap.Hooks(func(e zapcore.Entry) error {
		if e.Level >= zapcore.WarnLevel || e.LoggerName != pipeline.ArchiverLogger {
			return buf.Sync()
		}
		return nil
	}))
	log := zap.New(core, opts...)
	return log, level, func() {
		log.Sync()
		buf.Stop()
		closeOut()
	}, nil
}

// flushOnly passes writes on and does not fsync: buffered lines are handed
// to the system, not forced to disk, as zap's unbuffered lines were (and
// fsync of a terminal or pipe fails).
type flushOnly struct{ zapcore.WriteSyncer }

func (flushOnly) Sync() error { return nil }

// logFlush is the longest an info log line waits in the buffer (a
// variable for tests).
var logFlush = 200 * time.Millisecond

// reloadOnHangup re-reads the configuration file on SIGHUP and applies it
// to the running pipeline and the log level. A file that does not load or
// validate is refused with a log line; the old configuration stays. The
// returned function stops listening.
func reloadOnHangup(ctx context.Context, path string, p *pipeline.Pipeline, level zap.AtomicLevel, log *zap.Logger) func() {
	hup := make(chan os.Signal, 1)
	notifyHangup(hup)
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-ctx.Done():
				return
			case <-done:
				return
			case <-hup:
			}
			cfg, err := pipeline.LoadConfig(path)
			if err == nil {
				err = p.Reload(cfg)
			}
			if err != nil {
				log.Error("configuration reload refused; the old configuration stays in force", zap.String("config", path), zap.Error(err))
				continue
			}
			if lvl, err := zapcore.ParseLevel(cfg.Log.Level); err == nil {
				level.SetLevel(lvl)
			}
			log.Info("configuration reloaded", zap.String("config", path), zap.Int("max_threads", cfg.MaxThreads))
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
		<-stopped
	}
}
