// Command smtpq is the mail queue service and its tools: run the service,
// enqueue mail (also as a sendmail replacement), manage keys and inspect the
// queue. See README.md.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit statuses. Usage errors are 2, everything else that fails is 1, except
// the sendmail command, which follows sysexits.h.
const (
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr))
}

// run executes the command line args and returns the exit status. It prints
// at most one line on stderr for an error.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	switch filepath.Base(args[0]) {
	case "sendmail":
		// Invoked through a link named sendmail: behave as "smtpq sendmail".
		args = append([]string{args[0], "sendmail"}, args[1:]...)
	case "mailq":
		// As Postfix's mailq (sendmail -bp): the queue, one line each.
		args = append([]string{args[0], "queue", "list"}, args[1:]...)
	case "newaliases":
		return 0 // sendmail.aliases in the configuration needs no rebuilding
	}
	if len(args) > 1 && args[1] == "sendmail" {
		for i, a := range args[2:] {
			switch a {
			case "-bp": // list the queue, as mailq
				return run(append([]string{"mailq"}, slices.Delete(slices.Clone(args[2:]), i, i+1)...), stdin, stdout, stderr)
			case "-bi": // rebuild the aliases: nothing to rebuild
				return 0
			}
		}
	}
	root := newRootCmd(stdin, stdout, stderr)
	root.SetArgs(args[1:])
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "smtpq: %s\n", cli.Flatten(err.Error()))
	var ee *cli.ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	if isUsageError(err) {
		return exitUsage
	}
	return exitFailure
}

// isUsageError reports whether err is about the command line itself: marked
// by cli.Usage or cli.Usagef, or one of cobra's.
func isUsageError(err error) bool {
	// cobra's own complaints about the command line are plain errors.
	return cli.IsUsage(err) || strings.HasPrefix(err.Error(), "unknown command ") ||
		strings.HasPrefix(err.Error(), "accepts ") || strings.HasPrefix(err.Error(), "requires ")
}

func newRootCmd(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "smtpq",
		Short:         "A mail queue service: programs drop sealed messages in a folder, smtpq sends them",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.Usage(err) })
	root.PersistentFlags().String("config", "", "configuration file (default: $SMTPQ_CONFIG, else /etc/smtpq/smtpq.yaml)")
	for _, c := range commands {
		root.AddCommand(c())
	}
	return root
}

// commands are the subcommands; each file registers its own in an init-free
// way by appending in a var block below.
var commands = []func() *cobra.Command{
	newRunCmd,
	newKeygenCmd,
	newConfigCmd,
	newEnqueueCmd,
	newSendmailCmd,
	newDevsinkCmd,
	newQueueCmd,
	newServiceCmd,
	newConsoleCmd,
}
