package main

import "github.com/spf13/cobra"

func newEnqueueCmd() *cobra.Command {
	return &cobra.Command{Use: "enqueue", Short: "not yet implemented"}
}
