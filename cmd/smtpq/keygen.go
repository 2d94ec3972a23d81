package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline/queuefile"
)

func newKeygenCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "keygen",
		Short: "Create the service's key pair (identity_file and recipient_file of the configuration)",
		Long: `Create a new X25519 key pair: the private identity at the first identity_file
of the configuration (mode 0600, for the service only) and its public key at
recipient_file (mode 0644, for programs that enqueue mail). Existing files are
never overwritten. To rotate keys, put a new path first in identity_file (keep
the old one after it until the queue has drained) and run keygen again.`,
		Args: usageArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(configFlag(cmd))
			if err != nil {
				return err
			}
			if len(cfg.IdentityFile) == 0 || cfg.IdentityFile[0] == "" {
				return fmt.Errorf("identity_file is not set in %s", cfg.Path)
			}
			if cfg.RecipientFile == "" {
				return fmt.Errorf("recipient_file is not set in %s", cfg.Path)
			}
			if cfg.IdentityFile[0] == cfg.RecipientFile {
				return errors.New("identity_file and recipient_file must be different files")
			}
			rcpt, err := queuefile.GenerateKeys(cfg.IdentityFile[0], cfg.RecipientFile)
			if err != nil {
				return cli.OneLine(fmt.Errorf("keygen: %w", err))
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "identity (private key, keep secret): %s\n", cfg.IdentityFile[0])
			fmt.Fprintf(out, "recipient (public key, for producers): %s\n", cfg.RecipientFile)
			fmt.Fprintf(out, "public key: %s\n", rcpt)
			return nil
		},
	}
}
