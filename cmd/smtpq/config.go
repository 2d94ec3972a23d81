package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
)

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Inspect the configuration",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return cli.Usagef("unknown subcommand %s for %s (see %s --help)", cli.QuoteIfNeeded(args[0]), cmd.CommandPath(), cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "check",
		Short: "Validate the configuration file and print the effective configuration",
		Long: `Read and validate the configuration file (--config, else $SMTPQ_CONFIG, else
/etc/smtpq/smtpq.yaml) and print the effective configuration, defaults filled in
and paths made absolute, as YAML on standard output. Nothing secret is printed:
passwords live in password files, which are named but not read. An invalid file
gives one line naming the setting (and the line, for unknown keys and wrong
types) and exit status 1.`,
		Args: usageArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(configFlag(cmd))
			if err != nil {
				return err
			}
			text, err := cfg.Masked()
			if err != nil {
				return fmt.Errorf("config: %w", err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "# %s: valid\n", cfg.Path)
			_, err = out.Write(text)
			return err
		},
	})
	return cmd
}
