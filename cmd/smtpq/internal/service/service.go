// Package service is what "smtpq service ..." does: install smtpq as a
// system service and control it, through github.com/kardianos/service,
// whatever the machine's service manager: systemd, SysV init scripts,
// upstart, OpenRC, launchd or the Windows service control manager. The
// installed service runs
//
//	<this executable> run --config <absolute config path>
//
// with SMTPQ_SERVICE=<name> in its environment, which tells "run" to hand
// control to the service manager (RunUnderManager) rather than wait
// for Ctrl-C. What each start type means on each manager is in
// LongHelp and in README.md ("Running as a service").
//
// Who owns what: the definition files (unit, init script, plist, override,
// conf.d file) belong to the service manager once written; uninstall removes
// every one of them, the rc links and the pid file, and keeps the logs.
//
// The cobra commands and their flags are in package main
// (cmd/smtpq/service.go); what this package needs from the rest of smtpq,
// reading the configuration as "smtpq run" does and signalling a reload,
// comes in through InstallOptions and Options.
package service

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"
	"unicode"

	kardianos "github.com/kardianos/service"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline"
)

const (
	// DefaultName is the service name when --name is not given.
	DefaultName = "smtpq"

	// serviceEnv is set to the service's name in the environment of the
	// installed service. "smtpq run" then runs under the service manager's
	// control (Start/Stop of kardianos' Interface) even where kardianos
	// cannot tell that it was started by one: in a container, or under SysV
	// init while the init script that started it is still alive.
	serviceEnv = "SMTPQ_SERVICE"

	// servicePasswordEnv holds the password of the --user account when
	// installing on Windows (no flag takes a password: command lines are
	// visible to every user). Virtual accounts such as
	// "NT AUTHORITY\LocalService" need none.
	servicePasswordEnv = "SMTPQ_SERVICE_PASSWORD"

	// serviceShutdownGrace is how long SMTP sessions in progress may take to
	// finish when the service manager stops the service (an interactive
	// "smtpq run" allows 30s). With serviceStopTimeout it fits in the
	// shortest stop deadline among the managers: launchd's ExitTimeOut, 20s.
	serviceShutdownGrace = 15 * time.Second

	// serviceStopTimeout bounds Stop of the kardianos Interface: how long it
	// waits for the pipeline's Run to return after cancelling it.
	serviceStopTimeout = 20 * time.Second

	// scriptStopSeconds is how long the SysV script, upstart and OpenRC wait
	// after SIGTERM before they send SIGKILL.
	scriptStopSeconds = 30
)

// StartType says when the service manager starts the service.
type StartType string

const (
	StartAuto     StartType = "auto"     // at boot, and on demand
	StartManual   StartType = "manual"   // only on demand
	StartDisabled StartType = "disabled" // not at all until reinstalled
)

// ParseStartType reads --start-type; a bad value is a usage error.
func ParseStartType(s string) (StartType, error) {
	switch st := StartType(strings.ToLower(strings.TrimSpace(s))); st {
	case StartAuto, StartManual, StartDisabled:
		return st, nil
	}
	return "", cli.Usagef("--start-type %s: want auto, manual or disabled", cli.QuoteIfNeeded(s))
}

// serviceNameRE is what every manager accepts as a service name, a file
// name and a launchd label alike.
var serviceNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// CheckName refuses, as a usage error, a --name that is not serviceNameRE.
func CheckName(name string) error {
	if !serviceNameRE.MatchString(name) {
		return cli.Usagef("--name %s: want 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", cli.QuoteIfNeeded(name))
	}
	return nil
}

// unixUserRE is a portable POSIX user name (what useradd accepts).
var unixUserRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9._-]{0,31}\$?$`)

// CheckUser refuses, as a usage error, a --user that is not an account name
// on goos; empty means the manager's default account.
func CheckUser(user, goos string) error {
	if user == "" {
		return nil
	}
	if goos == "windows" {
		// DOMAIN\user, .\user, user@domain, NT AUTHORITY\LocalService.
		if strings.ContainsAny(user, "\"%") || strings.IndexFunc(user, unicode.IsControl) >= 0 {
			return cli.Usagef("--user %s: not a Windows account name", cli.QuoteIfNeeded(user))
		}
		return nil
	}
	if !unixUserRE.MatchString(user) {
		return cli.Usagef("--user %s: not a user name", cli.QuoteIfNeeded(user))
	}
	return nil
}

// unsafePathChar returns the first character of path that a service
// definition cannot carry safely, if any: the paths go into unit files,
// shell scripts, plists and a Windows command line, each with its own
// quoting rules (and systemd expands %, Windows %VAR%). On Unix only
// letters, digits and /._-+,:@=~ are allowed; on Windows anything but
// control characters, '"' and '%'.
func unsafePathChar(path, goos string) (rune, bool) {
	for _, r := range path {
		if unicode.IsControl(r) {
			return r, true
		}
		if goos == "windows" {
			if r == '"' || r == '%' {
				return r, true
			}
			continue
		}
		if unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("/._-+,:@=~", r) {
			continue
		}
		return r, true
	}
	return 0, false
}

// checkServicePath refuses a path the service definition cannot carry.
func checkServicePath(what, path, goos string) error {
	if r, bad := unsafePathChar(path, goos); bad {
		return fmt.Errorf("%s %s contains %q, which a service definition cannot carry safely; use a path without it (a symbolic link will do)", what, cli.QuoteIfNeeded(path), r)
	}
	return nil
}

// resolveServiceConfig makes the configuration path absolute (relative to
// the current folder), checks that the path can go into a service
// definition and that the file loads with load, and returns both.
func resolveServiceConfig(path, goos string, load func(string) (*pipeline.Config, error)) (string, *pipeline.Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", nil, fmt.Errorf("config %s: %w", path, err)
	}
	if err := checkServicePath("config", abs, goos); err != nil {
		return "", nil, err
	}
	cfg, err := load(abs)
	if err != nil {
		return "", nil, fmt.Errorf("refusing to install a service whose configuration does not load: %w", err)
	}
	return abs, cfg, nil
}

// serviceExecutable returns the absolute path of this executable, which the
// service will run, refusing one that will not be there later.
func serviceExecutable(goos string) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding this executable: %w", err)
	}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	if strings.Contains(exe, "go-build") {
		return "", fmt.Errorf("this executable %s is a temporary build (go run); build it (make build) and install the service from bin/smtpq or a copy in /usr/local/bin", exe)
	}
	if err := checkServicePath("executable", exe, goos); err != nil {
		return "", err
	}
	return exe, nil
}

// installSpec is what "service install" installs.
type installSpec struct {
	name     string
	exe      string // absolute
	config   string // absolute
	user     string // empty: the manager's default (root, LocalSystem)
	password string // Windows --user password, from servicePasswordEnv
	start    StartType
}

// kardianosConfig maps spec to kardianos' Config for the given platform
// (kardianos.Platform()): the options that carry the start type, the custom
// SysV script, and the environment that marks the process as a service.
// Start types that kardianos cannot express are finished in afterInstall.
func kardianosConfig(spec installSpec, platform string) (*kardianos.Config, error) {
	display := "smtpq mail queue"
	if spec.name != DefaultName {
		display += " (" + spec.name + ")"
	}
	c := &kardianos.Config{
		Name:        spec.name,
		DisplayName: display,
		Description: "smtpq mail queue service: sends the mail queued by applications (config " + spec.config + ")",
		UserName:    spec.user,
		Executable:  spec.exe,
		Arguments:   []string{"run", "--config", spec.config},
		EnvVars:     map[string]string{serviceEnv: spec.name},
		Option:      kardianos.KeyValue{},
	}
	switch platform {
	case platformSystemd:
		c.Option["ReloadSignal"] = "HUP" // systemctl reload: smtpq re-reads its configuration
		c.Dependencies = []string{"After=network-online.target", "Wants=network-online.target"}
		if spec.start == StartDisabled {
			// systemctl mask refuses a unit file in /etc/systemd/system;
			// this is the nearest: "systemctl start" is refused.
			c.Dependencies = append(c.Dependencies, "RefuseManualStart=yes")
		}
	case platformSysV:
		c.Option["SysvScript"] = sysvScript(sysvParams{
			Name: spec.name, Exe: spec.exe, Args: c.Arguments, Env: c.EnvVars,
			User: spec.user, Start: spec.start,
			PIDFile: sysvPIDFile(spec.name), LogFile: sysvLogFile(spec.name), StopSeconds: scriptStopSeconds,
		})
	case platformUpstart:
		c.Option["LogOutput"] = true // else upstart discards the log ("console none")
	case platformOpenRC:
		// Start type, user and stop timeout go into /etc/conf.d/NAME.
	case platformLaunchd:
		c.Option["KeepAlive"] = spec.start == StartAuto
		c.Option["RunAtLoad"] = spec.start == StartAuto
	case platformWindows:
		c.Option["StartType"] = map[StartType]string{
			StartAuto: "automatic", StartManual: "manual", StartDisabled: "disabled",
		}[spec.start]
		// As systemd's Restart=always, RestartSec=120.
		c.Option["OnFailure"] = "restart"
		c.Option["OnFailureDelayDuration"] = "2m"
		c.Option["OnFailureResetPeriod"] = 24 * 60 * 60
		if spec.password != "" {
			c.Option["Password"] = spec.password
		}
	default:
		if spec.start != StartAuto {
			return nil, fmt.Errorf("--start-type %s is not supported on %s: only auto", spec.start, platform)
		}
		if spec.user != "" && (platform == platformRCS || platform == platformProcd) {
			return nil, fmt.Errorf("--user is not supported on %s", platform)
		}
	}
	return c, nil
}

// LongHelp is the help text of "smtpq service".
const LongHelp = `Install smtpq as a system service and control it, with the machine's service
manager: systemd, SysV init scripts, upstart, OpenRC, launchd (macOS) or the
Windows service control manager.

  smtpq service install --config FILE [--start-type auto|manual|disabled]
                        [--name NAME] [--user USER]
  smtpq service uninstall|start|stop|restart|status [--name NAME]

The service runs "smtpq run --config FILE" with FILE made absolute; install
refuses a configuration that does not load (or whose keys the service could
not read). --name defaults to "smtpq". Start types:

  auto      started at boot (the default)
  manual    installed, started only by "smtpq service start"
  disabled  installed, but not started at all until reinstalled

  systemd   auto: enabled. manual: not enabled. disabled: not enabled and
            RefuseManualStart=yes (systemctl mask refuses a unit that lives
            in /etc/systemd/system).
  SysV      auto: S links in /etc/rc2.d..rc5.d. manual: no S links.
            disabled: no S links, and the init script refuses "start".
  upstart   auto: "start on runlevel". manual: "manual" in
            /etc/init/NAME.override. disabled: also a pre-start that fails.
  OpenRC    auto: in the default runlevel. manual: in no runlevel.
            disabled: also a start_pre in /etc/conf.d/NAME that fails.
  launchd   auto: RunAtLoad and KeepAlive. manual: neither; "service start"
            loads and starts it. disabled: "launchctl disable system/NAME".
  Windows   auto: Automatic. manual: Manual (Demand-Start). disabled:
            Disabled.

Stopping lets SMTP sessions in progress finish for up to 15s, then closes
them (those messages are retried) and exits. status exits 0 when running, 3
when installed but not running, 4 when not installed. Where no service
manager is found, every command says so and exits 1.`

// Platforms as named by kardianos.Platform().
const (
	platformSystemd = "linux-systemd"
	platformSysV    = "unix-systemv"
	platformUpstart = "linux-upstart"
	platformOpenRC  = "linux-openrc"
	platformRCS     = "linux-rcs"
	platformProcd   = "linux-procd"
	platformLaunchd = "darwin-launchd"
	platformWindows = "windows-service"
)

// errNoServiceManager is the answer of every command where there is none.
var errNoServiceManager = errors.New("no service manager found on this machine (looked for systemd, upstart, OpenRC, SysV init scripts in /etc/init.d, launchd and Windows services); run \"smtpq run --config FILE\" under your own supervisor")

// Options are what every service command is given.
type Options struct {
	Name string    // the service name, checked by CheckName
	Out  io.Writer // where the commands report what they did

	// SignalReload asks the process pid to re-read its configuration (SIGHUP
	// where there is one); Reload calls it. Required.
	SignalReload func(pid int) error
}

// Manager runs the service commands for one service name against
// the machine's service manager.
type Manager struct {
	name         string
	platform     string
	out          io.Writer
	signalReload func(pid int) error
}

// NewManager finds the machine's service manager; it fails where
// there is none.
func NewManager(opts Options) (*Manager, error) {
	platform := kardianos.Platform()
	if platform == "" {
		return nil, errNoServiceManager
	}
	if platform == platformSysV {
		// kardianos falls back to SysV wherever it finds nothing else.
		if fi, err := os.Stat("/etc/init.d"); err != nil || !fi.IsDir() {
			return nil, errNoServiceManager
		}
	}
	return &Manager{name: opts.Name, platform: platform, out: opts.Out, signalReload: opts.SignalReload}, nil
}

// kardianos returns kardianos' handle on the service; its Interface is
// only used by Run, which the control commands never call.
func (m *Manager) kardianos(c *kardianos.Config) (kardianos.Service, error) {
	if c == nil {
		c = &kardianos.Config{Name: m.name}
	}
	s, err := kardianos.New(idleProgram{}, c)
	if errors.Is(err, kardianos.ErrNoServiceSystemDetected) {
		return nil, errNoServiceManager
	}
	return s, err
}

type idleProgram struct{}

func (idleProgram) Start(kardianos.Service) error { return nil }
func (idleProgram) Stop(kardianos.Service) error  { return nil }

// needsPrivilege refuses early, with the reason, what only root (or an
// administrator) may do.
func (m *Manager) needsPrivilege(action string) error {
	if msg := privilegeProblem(); msg != "" {
		return fmt.Errorf("service %s: %s", action, msg)
	}
	return nil
}

// InstallOptions are what "service install" is given besides the name.
type InstallOptions struct {
	// Config is the configuration file as given; the service gets it made
	// absolute.
	Config string
	// LoadConfig reads a configuration file as "smtpq run" will, with a
	// one-line error: install refuses a configuration that does not load.
	// Required.
	LoadConfig func(path string) (*pipeline.Config, error)
	User       string // empty: the manager's default (root, LocalSystem); checked by CheckUser
	Start      StartType
}

// Install installs the service after checking that this process may, that
// the configuration loads and that the service could start with it; the
// caller has checked the flags (CheckName, ParseStartType, CheckUser).
func (m *Manager) Install(opts InstallOptions) error {
	if err := m.needsPrivilege("install"); err != nil {
		return err
	}
	spec := installSpec{name: m.name, user: opts.User, start: opts.Start}
	if runtime.GOOS == "windows" && opts.User != "" {
		spec.password = os.Getenv(servicePasswordEnv)
	}
	var cfg *pipeline.Config
	var err error
	if spec.config, cfg, err = resolveServiceConfig(opts.Config, runtime.GOOS, opts.LoadConfig); err != nil {
		return err
	}
	if spec.exe, err = serviceExecutable(runtime.GOOS); err != nil {
		return err
	}
	if err := checkServiceCanStart(cfg, spec.user); err != nil {
		return err
	}
	return m.install(spec)
}

// install installs spec; the caller has checked the privilege, the flags
// and the configuration.
func (m *Manager) install(spec installSpec) error {
	st, err := m.inspect()
	if err != nil {
		return err
	}
	if st.Installed {
		return fmt.Errorf("service %s is already installed (%s); uninstall it first (smtpq service uninstall --name %s)", m.name, st.Definition, m.name)
	}
	if spec.user != "" && m.platform == platformSysV {
		if err := lookPath("setpriv"); err != nil {
			return fmt.Errorf("--user on SysV needs setpriv (util-linux): %w", err)
		}
	}
	c, err := kardianosConfig(spec, m.platform)
	if err != nil {
		return err
	}
	s, err := m.kardianos(c)
	if err != nil {
		return err
	}
	if err := s.Install(); err != nil {
		return fmt.Errorf("installing service %s on %s: %w", m.name, m.platform, windowsHint(err))
	}
	if err := m.afterInstall(spec); err != nil {
		_ = s.Uninstall()
		m.cleanUp()
		return fmt.Errorf("installing service %s on %s: %w (the installation was removed again)", m.name, m.platform, err)
	}
	st, err = m.inspect()
	if err != nil {
		return err
	}
	fmt.Fprintf(m.out, "installed service %s (%s): %s\n", m.name, m.platform, st.Definition)
	fmt.Fprintf(m.out, "it runs:    %s\n", strings.Join(st.Command, " "))
	fmt.Fprintf(m.out, "start type: %s (%s)\n", spec.start, startTypeMeaning(spec.start, m.platform))
	if spec.user != "" {
		fmt.Fprintf(m.out, "user:       %s (it must be able to read and rename the files producers queue: see \"File permissions\" in README.md)\n", spec.user)
	}
	if st.Logs != "" {
		fmt.Fprintf(m.out, "logs:       %s\n", st.Logs)
	}
	if spec.start != StartDisabled {
		fmt.Fprintf(m.out, "start it:   %s service start%s\n", spec.exe, nameArg(m.name))
	}
	return nil
}

// afterInstall finishes what kardianos' Install leaves to do for the start
// type, and writes the extra files some managers need.
func (m *Manager) afterInstall(spec installSpec) error {
	switch m.platform {
	case platformSystemd:
		if spec.start != StartAuto {
			return runTool("systemctl", "disable", "--quiet", m.name+".service")
		}
	case platformSysV:
		if spec.start != StartAuto {
			return removeRCLinks(m.name, "S")
		}
	case platformUpstart:
		return writeDefinition(upstartOverridePath(m.name), upstartOverride(spec), 0o644)
	case platformOpenRC:
		if err := writeDefinition(openRCConfPath(m.name), openRCConf(spec), 0o644); err != nil {
			return err
		}
		if spec.start != StartAuto {
			return runTool("rc-update", "del", m.name, "default")
		}
	case platformLaunchd:
		if spec.start == StartDisabled {
			return runTool("launchctl", "disable", "system/"+m.name)
		}
	}
	return nil
}

// Uninstall stops the service if it runs and removes it, its rc links and
// pid file; the logs are kept.
func (m *Manager) Uninstall() error {
	if err := m.needsPrivilege("uninstall"); err != nil {
		return err
	}
	st, err := m.inspect()
	if err != nil {
		return err
	}
	if !st.Installed {
		return fmt.Errorf("service %s is not installed (%s)", m.name, m.platform)
	}
	if st.Running {
		if err := m.Stop(); err != nil {
			return fmt.Errorf("not uninstalling service %s: %w", m.name, err)
		}
	}
	if m.platform == platformLaunchd && st.StartType == string(StartDisabled) {
		// Leave no entry behind in launchd's database of disabled jobs.
		if err := runTool("launchctl", "enable", "system/"+m.name); err != nil {
			return err
		}
	}
	s, err := m.kardianos(nil)
	if err != nil {
		return err
	}
	if err := s.Uninstall(); err != nil {
		// OpenRC: rc-update fails for a service in no runlevel, after the
		// script is gone; that is not a failure to uninstall.
		if again, ierr := m.inspect(); ierr != nil || again.Installed {
			return fmt.Errorf("uninstalling service %s: %w", m.name, windowsHint(err))
		}
	}
	removed := m.cleanUp()
	fmt.Fprintf(m.out, "uninstalled service %s (%s): removed %s\n", m.name, m.platform, strings.Join(append([]string{st.Definition}, removed...), ", "))
	if st.Logs != "" {
		fmt.Fprintf(m.out, "logs kept:  %s\n", st.Logs)
	}
	return nil
}

// cleanUp removes what kardianos' Uninstall leaves behind and returns what
// it removed.
func (m *Manager) cleanUp() []string {
	var removed []string
	remove := func(path string) {
		if err := os.Remove(path); err == nil {
			removed = append(removed, path)
		}
	}
	switch m.platform {
	case platformSysV:
		links, _ := rcLinks(m.name, "")
		for _, l := range links {
			remove(l)
		}
		remove(sysvPIDFile(m.name))
	case platformSystemd:
		_ = runTool("systemctl", "reset-failed", m.name+".service")
	case platformUpstart:
		remove(upstartOverridePath(m.name))
	case platformOpenRC:
		remove(openRCConfPath(m.name))
	}
	return removed
}

// installed returns the service's state, or an error if it is not installed.
func (m *Manager) installed(action string) (*serviceState, error) {
	if err := m.needsPrivilege(action); err != nil {
		return nil, err
	}
	st, err := m.inspect()
	if err != nil {
		return nil, err
	}
	if !st.Installed {
		return nil, fmt.Errorf("service %s is not installed (%s); install it with: smtpq service install --config FILE%s", m.name, m.platform, nameArg(m.name))
	}
	return st, nil
}

// Start starts the installed service and waits a little to see it running.
func (m *Manager) Start() error {
	st, err := m.installed("start")
	if err != nil {
		return err
	}
	if st.StartType == string(StartDisabled) {
		return fmt.Errorf("service %s is disabled (installed with --start-type disabled); reinstall it with --start-type manual or auto to start it", m.name)
	}
	switch m.platform {
	case platformSysV:
		err = runInitScript(m.out, m.name, "start")
	case platformLaunchd:
		err = launchdStart(m.name, st)
	default:
		var s kardianos.Service
		if s, err = m.kardianos(nil); err == nil {
			err = s.Start()
		}
	}
	if err != nil {
		return fmt.Errorf("starting service %s: %w", m.name, windowsHint(err))
	}
	return m.reportStarted()
}

// reportStarted waits a little for the service to be seen running, and
// says so, or fails pointing at the logs.
func (m *Manager) reportStarted() error {
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := m.inspect()
		if err != nil {
			return err
		}
		if st.Running {
			fmt.Fprintf(m.out, "service %s is running%s\n", m.name, pidText(st.PID))
			return nil
		}
		if time.Now().After(deadline) {
			where := ""
			if st.Logs != "" {
				where = "; see " + st.Logs
			}
			return fmt.Errorf("service %s did not stay running (%s)%s", m.name, st.stateWord(), where)
		}
		<-tick.C
	}
}

// Stop stops the service; it finishes the SMTP sessions in progress (up to
// 15s, serviceShutdownGrace) first.
func (m *Manager) Stop() error {
	st, err := m.installed("stop")
	if err != nil {
		return err
	}
	switch m.platform {
	case platformSysV:
		err = runInitScript(m.out, m.name, "stop")
	default:
		if !st.Running {
			fmt.Fprintf(m.out, "service %s is not running\n", m.name)
			return nil
		}
		var s kardianos.Service
		if s, err = m.kardianos(nil); err == nil {
			err = s.Stop()
		}
	}
	if err != nil {
		return fmt.Errorf("stopping service %s: %w", m.name, windowsHint(err))
	}
	if m.platform != platformSysV {
		fmt.Fprintf(m.out, "service %s stopped\n", m.name)
	}
	return nil
}

// Restart stops the service, then starts it.
func (m *Manager) Restart() error {
	st, err := m.installed("restart")
	if err != nil {
		return err
	}
	if st.StartType == string(StartDisabled) {
		return fmt.Errorf("service %s is disabled (installed with --start-type disabled); reinstall it with --start-type manual or auto to start it", m.name)
	}
	switch m.platform {
	case platformSysV, platformLaunchd:
		// kardianos' launchd Restart only reloads, which does not start a
		// manual service; the SysV script is run directly to see its output.
		if err := m.Stop(); err != nil {
			return err
		}
		return m.Start()
	}
	s, err := m.kardianos(nil)
	if err == nil {
		err = s.Restart()
	}
	if err != nil {
		return fmt.Errorf("restarting service %s: %w", m.name, windowsHint(err))
	}
	return m.reportStarted()
}

// Reload sends the running service SIGHUP: it re-reads its configuration
// and keeps the old one if the new one does not validate (see its log).
func (m *Manager) Reload() error {
	st, err := m.installed("reload")
	if err != nil {
		return err
	}
	if !st.Running || st.PID == 0 {
		return fmt.Errorf("service %s is not running (%s): nothing to reload", m.name, st.stateWord())
	}
	if err := m.signalReload(st.PID); err != nil {
		return fmt.Errorf("reloading service %s (pid %d): %w", m.name, st.PID, err)
	}
	fmt.Fprintf(m.out, "asked service %s (pid %d) to reload its configuration; its log says whether it took it\n", m.name, st.PID)
	return nil
}

// Exit statuses of "service status", as LSB init scripts and systemctl.
const (
	ExitStopped      = 3
	ExitNotInstalled = 4
)

// Status prints the service's state and fails, with exit status
// ExitNotInstalled or ExitStopped, unless it is running.
func (m *Manager) Status() error {
	st, err := m.inspect()
	if err != nil {
		return err
	}
	fmt.Fprint(m.out, st.report(m.name, m.platform))
	switch {
	case !st.Installed:
		return cli.WithCode(ExitNotInstalled, fmt.Errorf("service %s is not installed", m.name))
	case !st.Running:
		return cli.WithCode(ExitStopped, fmt.Errorf("service %s is installed but not running (%s)", m.name, st.stateWord()))
	}
	return nil
}

// serviceState is what status reports.
type serviceState struct {
	Installed  bool
	Definition string   // the unit file, init script, plist or registry key
	Command    []string // what the service manager runs
	StartType  string   // auto, manual, disabled; empty when unknown
	Running    bool
	State      string // the manager's word, when it says more than running or not
	PID        int    // 0 when unknown
	Logs       string // where its output goes
}

func (st *serviceState) stateWord() string {
	switch {
	case st.State != "":
		return st.State
	case st.Running:
		return "running"
	}
	return "stopped"
}

// report is the text "service status" prints.
func (st *serviceState) report(name, platform string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "service:    %s (%s)\n", name, platform)
	if !st.Installed {
		b.WriteString("installed:  no\n")
		return b.String()
	}
	fmt.Fprintf(&b, "installed:  yes, %s\n", st.Definition)
	start := st.StartType
	if start == "" {
		start = "unknown"
	}
	fmt.Fprintf(&b, "start type: %s\n", start)
	if st.Running {
		fmt.Fprintf(&b, "running:    yes%s\n", pidText(st.PID))
	} else {
		fmt.Fprintf(&b, "running:    no (%s)\n", st.stateWord())
	}
	fmt.Fprintf(&b, "command:    %s\n", strings.Join(st.Command, " "))
	if cfgPath := configArg(st.Command); cfgPath != "" {
		if _, err := pipeline.LoadConfig(cfgPath); errors.Is(err, fs.ErrPermission) {
			fmt.Fprintf(&b, "config:     %s (not readable by this user)\n", cfgPath)
		} else if err != nil {
			fmt.Fprintf(&b, "config:     %s (does not load: %s)\n", cfgPath, cli.Flatten(err.Error()))
		} else {
			fmt.Fprintf(&b, "config:     %s\n", cfgPath)
		}
	} else {
		b.WriteString("config:     unknown (no --config in the command)\n")
	}
	if st.Logs != "" {
		fmt.Fprintf(&b, "logs:       %s\n", st.Logs)
	}
	return b.String()
}

// inspect reads the installed definition and asks the manager whether the
// service runs.
func (m *Manager) inspect() (*serviceState, error) {
	if m.platform == platformWindows {
		return inspectWindows(m.name)
	}
	st := &serviceState{Definition: definitionPath(m.platform, m.name), Logs: logsOf(m.platform, m.name)}
	if st.Definition == "" {
		// A manager whose files smtpq does not know (FreeBSD, Solaris,
		// AIX): kardianos alone answers.
		return m.inspectByKardianos(st)
	}
	text, err := os.ReadFile(st.Definition)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	st.Installed = true
	st.Command = commandFromDefinition(m.platform, string(text))
	switch m.platform {
	case platformSysV:
		st.StartType = sysvStartType(m.name, string(text))
		st.PID = sysvRunningPID(sysvPIDFile(m.name), st.Command)
		st.Running = st.PID != 0
		return st, nil
	case platformSystemd:
		return inspectSystemd(m.name, string(text), st)
	case platformUpstart:
		override, _ := os.ReadFile(upstartOverridePath(m.name))
		st.StartType = markedStartType(string(override))
	case platformOpenRC:
		conf, _ := os.ReadFile(openRCConfPath(m.name))
		st.StartType = markedStartType(string(conf))
		if st.StartType == string(StartAuto) {
			if _, err := os.Stat("/etc/runlevels/default/" + m.name); err != nil {
				st.StartType = string(StartManual)
			}
		}
	case platformLaunchd:
		st.StartType = string(StartManual)
		if regexp.MustCompile(`<key>RunAtLoad</key>\s*<true/>`).Match(text) {
			st.StartType = string(StartAuto)
		}
		if launchdDisabled(m.name) {
			st.StartType = string(StartDisabled)
		}
	}
	return m.inspectByKardianos(st)
}

// inspectByKardianos asks kardianos whether the service runs. Where the
// definition file is unknown (st.Definition empty) it also says whether the
// service is installed.
func (m *Manager) inspectByKardianos(st *serviceState) (*serviceState, error) {
	s, err := m.kardianos(nil)
	if err != nil {
		return nil, err
	}
	known := st.Definition != ""
	status, err := s.Status()
	switch {
	case errors.Is(err, kardianos.ErrNotInstalled):
		if st.Installed {
			st.State = "unknown to the service manager"
		}
		return st, nil
	case err != nil && !known:
		return nil, fmt.Errorf("asking %s about service %s: %w", m.platform, m.name, err)
	case err != nil:
		st.State = cli.Flatten(err.Error())
	case status == kardianos.StatusRunning:
		st.Running = true
	}
	if !known {
		st.Installed = true
		st.Definition = "registered with " + m.platform
	}
	return st, nil
}

// checkServiceCanStart checks, as far as possible at install time, that the
// service will be able to start with cfg: when it runs as the installing
// user, that the pipeline can be set up (keys, password files); when it
// runs as another user, that this user owns the identity files (the
// service refuses others).
func checkServiceCanStart(cfg *pipeline.Config, user string) error {
	if user == "" || isCurrentUser(user) {
		if _, err := pipeline.New(cfg, pipeline.Options{}); err != nil {
			return fmt.Errorf("refusing to install: the service could not start with %s: %w", cfg.Path, cli.OneLine(err))
		}
		return nil
	}
	return checkOwnedBy(cfg, user)
}

func nameArg(name string) string {
	if name == DefaultName {
		return ""
	}
	return " --name " + name
}

func pidText(pid int) string {
	if pid == 0 {
		return ""
	}
	return fmt.Sprintf(" (pid %d)", pid)
}
