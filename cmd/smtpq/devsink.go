package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline/smtptest"
)

// newDevsinkCmd is a loopback SMTP sink for development and demos: the
// fake server of package smtptest, writing what it receives to a folder.
func newDevsinkCmd() *cobra.Command {
	var listen, dir string
	var failTo string
	cmd := &cobra.Command{
		Use:   "devsink",
		Short: "Run a loopback SMTP sink that saves what it receives (for development and demos)",
		Long: `Run a fake SMTP server on a loopback address that accepts every message and
saves it in --dir as <n>.eml, for trying smtpq without a real mail server.
Recipients whose address starts with --fail-prefix are refused with 550, to
show what a permanent failure looks like. It stops on SIGINT or SIGTERM.`,
		Args: usageArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			host, portStr, err := net.SplitHostPort(listen)
			if err != nil {
				return cli.Usagef("--listen %s: %v", listen, err)
			}
			if _, err := strconv.Atoi(portStr); err != nil {
				return cli.Usagef("--listen %s: bad port", listen)
			}
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return err
			}
			srv := smtptest.NewUnstartedServer()
			srv.Addr = net.JoinHostPort(host, portStr)
			if failTo != "" {
				srv.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
					if p.Step == smtptest.Rcpt && len(p.Arg) >= len(failTo) && p.Arg[:len(failTo)] == failTo {
						return smtptest.Reply(550, [3]int{5, 1, 1}, "No such user here (devsink --fail-prefix)")
					}
					return smtptest.Fault{}
				}
			}
			if err := srv.Start(); err != nil {
				return err
			}
			defer srv.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "devsink listening on %s, saving to %s\n", srv.AddrString(), dir)
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			for n := 1; ; n++ {
				msgs, err := srv.WaitMessages(ctx, n)
				if err != nil {
					return nil // stopped
				}
				m := msgs[n-1]
				path := filepath.Join(dir, fmt.Sprintf("%06d.eml", n))
				if err := os.WriteFile(path, m.Data, 0o640); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "received %s from %s for %v\n", path, m.From, m.To)
			}
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:2525", "loopback address to listen on")
	cmd.Flags().StringVar(&dir, "dir", "received", "folder for received messages")
	cmd.Flags().StringVar(&failTo, "fail-prefix", "", "refuse recipients starting with this, with 550")
	return cmd
}
