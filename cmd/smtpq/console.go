package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline/console"
)

// smtpq console passwd: the password hashes of console.users.

func newConsoleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "console",
		Short: "The web console's users (see README, Web console)",
		Args:  usageArgs(0, 0),
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "passwd",
		Short: "Read a password on standard input and print its hash for console.users",
		Long: `Read a password on standard input and print its bcrypt hash, to put in the
configuration as console.users.NAME.password_hash. On a terminal the password
is read twice, without echo; otherwise the first line of standard input is the
password. Neither the password nor the hash is logged anywhere.`,
		Args: usageArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			pw, err := readPassword(cmd.InOrStdin(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			h, err := console.HashPassword(pw)
			clear(pw)
			if err != nil {
				return cli.OneLine(fmt.Errorf("console passwd: %w", err))
			}
			fmt.Fprintln(cmd.OutOrStdout(), h)
			return nil
		},
	})
	return cmd
}

// readPassword reads the password: twice without echo from a terminal,
// else the first line of in.
func readPassword(in io.Reader, prompt io.Writer) ([]byte, error) {
	f, isFile := in.(*os.File)
	if isFile {
		if restore, ok := noEcho(f); ok {
			defer restore()
			r := bufio.NewReader(f)
			fmt.Fprint(prompt, "Password: ")
			a, err := readLine(r)
			fmt.Fprint(prompt, "\nAgain: ")
			if err == nil {
				var b []byte
				b, err = readLine(r)
				if err == nil && string(a) != string(b) {
					err = errors.New("console passwd: the two passwords differ")
				}
				clear(b)
			}
			fmt.Fprintln(prompt)
			return a, err
		}
	}
	return readLine(bufio.NewReader(in))
}

// readLine reads one line without its line ending; an empty one is an
// error.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, errors.New("console passwd: password line too long")
		}
		return nil, fmt.Errorf("console passwd: reading the password: %w", err)
	}
	pw := []byte(strings.TrimRight(string(line), "\r\n"))
	if len(pw) == 0 {
		return nil, cli.Usagef("console passwd: no password on standard input")
	}
	return pw, nil
}
