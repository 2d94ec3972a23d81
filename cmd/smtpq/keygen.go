package main

import "github.com/spf13/cobra"

func newKeygenCmd() *cobra.Command {
	return &cobra.Command{Use: "keygen", Short: "not yet implemented"}
}
