package main

import "github.com/spf13/cobra"

func newSendmailCmd() *cobra.Command {
	return &cobra.Command{Use: "sendmail", Short: "not yet implemented"}
}
