package service

// The parts of "smtpq service" that depend on the init system: where each
// keeps its definition and logs, the SysV init script smtpq installs in
// place of kardianos' own, the upstart override and OpenRC conf.d files that
// carry the start type, and reading the command line back from an installed
// definition. Everything here compiles on every platform (it is chosen by
// kardianos.Platform() at run time), so that it is tested everywhere.

import (
	"bytes"
	"errors"
	"fmt"
	"html"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
)

// definitionPath is the file that defines the service on platform; empty
// where smtpq does not know it (kardianos then answers alone).
func definitionPath(platform, name string) string {
	switch platform {
	case platformSystemd:
		return "/etc/systemd/system/" + name + ".service"
	case platformSysV, platformOpenRC, platformRCS, platformProcd:
		return "/etc/init.d/" + name
	case platformUpstart:
		return "/etc/init/" + name + ".conf"
	case platformLaunchd:
		return "/Library/LaunchDaemons/" + name + ".plist"
	}
	return ""
}

// logsOf says where the service's output (smtpq's log) goes on platform.
func logsOf(platform, name string) string {
	switch platform {
	case platformSystemd:
		return "journalctl -u " + name
	case platformSysV:
		return sysvLogFile(name)
	case platformUpstart:
		return "/var/log/" + name + ".err"
	case platformOpenRC:
		return "/var/log/<executable name>.err (supervise-daemon)"
	case platformLaunchd:
		return "/var/log/" + name + ".err.log"
	case platformWindows:
		return "log.dir/smtpq.log if log.dir is set (a service has no console); start failures in the Application event log"
	}
	return ""
}

// startTypeMeaning says in a few words what a start type does on platform.
func startTypeMeaning(st StartType, platform string) string {
	switch st {
	case StartAuto:
		switch platform {
		case platformSystemd:
			return "enabled: starts at boot"
		case platformSysV:
			return "S links in /etc/rc2.d..rc5.d: starts at boot"
		case platformWindows:
			return "Automatic: starts at boot"
		}
		return "starts at boot"
	case StartManual:
		if platform == platformWindows {
			return "Manual: starts only on demand"
		}
		return "not started at boot, only by \"smtpq service start\""
	}
	switch platform {
	case platformSystemd:
		return "not enabled, and systemctl start is refused (RefuseManualStart=yes)"
	case platformSysV:
		return "no S links, and the init script refuses to start"
	case platformWindows:
		return "Disabled: cannot be started"
	case platformLaunchd:
		return "launchctl disable: launchd will not load it"
	}
	return "not started at boot, and starting it is refused"
}

// startTypeMarker records the start type in the files smtpq writes (init
// script, upstart override, OpenRC conf.d) for status to read back.
const startTypeMarker = "# smtpq start type: "

var startTypeMarkerRE = regexp.MustCompile(`(?m)^` + startTypeMarker + `(auto|manual|disabled)\s*$`)

func markedStartType(text string) string {
	if m := startTypeMarkerRE.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	return ""
}

// ---- SysV ----

func sysvPIDFile(name string) string { return "/var/run/" + name + ".pid" }
func sysvLogFile(name string) string { return "/var/log/" + name + ".log" }

// sysvParams are the values baked into the SysV init script.
type sysvParams struct {
	Name        string
	Exe         string
	Args        []string
	Env         map[string]string
	User        string // empty: root
	Start       StartType
	PIDFile     string
	LogFile     string
	StopSeconds int
}

// sysvScript is the init script smtpq installs on SysV (kardianos'
// SysvScript option). It differs from kardianos' own: Provides names the
// service (not a path) so that insserv and update-rc.d accept it; the pid
// file is only believed if the process is alive, not a zombie, and runs
// this executable; the daemon gets a session of its own and stdin from
// /dev/null, and stdout and stderr appended to one log file; "start" fails,
// with the end of the log, if the process is gone a second later; "stop"
// waits up to StopSeconds after SIGTERM (kardianos: 10s, less than the
// pipeline's grace), then sends SIGKILL; reload sends SIGHUP (smtpq re-reads
// its configuration); status exits 0, 1 or 3 as LSB says;
// --user is honoured (with setpriv); a disabled service refuses to start.
//
// All values are validated (names and paths without spaces, quotes or shell
// characters), so they are written into the script unquoted. The script has
// no "{{", so kardianos' template engine leaves it as it is.
func sysvScript(p sysvParams) string {
	defaultStart, chkconfig := "2 3 4 5", "2345"
	if p.Start != StartAuto {
		defaultStart, chkconfig = "", "-"
	}
	cmd := strings.Join(append([]string{p.Exe}, p.Args...), " ")
	keys := make([]string, 0, len(p.Env))
	for k := range p.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var env strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&env, "%s=%s\nexport %s\n", k, p.Env[k], k)
	}
	r := strings.NewReplacer(
		"@NAME@", p.Name,
		"@CHKCONFIG@", chkconfig,
		"@DEFAULT_START@", defaultStart,
		"@START_TYPE@", string(p.Start),
		"@CMD@", cmd,
		"@USER@", p.User,
		"@PID_FILE@", p.PIDFile,
		"@LOG_FILE@", p.LogFile,
		"@STOP_SECONDS@", strconv.Itoa(p.StopSeconds),
		"@ENV@", env.String(),
	)
	return r.Replace(sysvTemplate)
}

const sysvTemplate = `#!/bin/sh
# chkconfig: @CHKCONFIG@ 99 01
# description: smtpq mail queue (@NAME@)
### BEGIN INIT INFO
# Provides:          @NAME@
# Required-Start:    $local_fs $remote_fs $network $syslog
# Required-Stop:     $local_fs $remote_fs $network $syslog
# Default-Start:     @DEFAULT_START@
# Default-Stop:      0 1 6
# Short-Description: smtpq mail queue (@NAME@)
# Description:       Sends the mail that applications queue for smtpq.
### END INIT INFO
#
# Written by "smtpq service install"; remove it with
# "smtpq service uninstall --name @NAME@", which also removes the rc links
# and the pid file (not the log).
# smtpq start type: @START_TYPE@

name=@NAME@
start_type=@START_TYPE@
cmd="@CMD@"
run_as=@USER@
pid_file=@PID_FILE@
log_file=@LOG_FILE@
stop_seconds=@STOP_SECONDS@

@ENV@
# Environment variables for smtpq may be set here.
[ -r /etc/default/$name ] && . /etc/default/$name
[ -r /etc/sysconfig/$name ] && . /etc/sysconfig/$name

exe=${cmd%% *}
comm=$(printf '%.15s' "${exe##*/}")

# running_pid prints the pid of the running service. It fails if the pid
# file is missing or stale: no such process, a zombie, or another program.
running_pid() {
	pid=$(cat "$pid_file" 2>/dev/null)
	case $pid in '' | *[!0-9]*) return 1 ;; esac
	stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
	pcomm=${stat#*(}
	pcomm=${pcomm%)*}
	set -- ${stat##*)}
	[ "$pcomm" = "$comm" ] && [ "$1" != Z ] || return 1
	echo "$pid"
}

do_start() {
	if [ "$start_type" = disabled ]; then
		echo "$name is disabled (installed with --start-type disabled); reinstall it with --start-type manual or auto to start it" >&2
		return 1
	fi
	if pid=$(running_pid); then
		echo "$name is already running (pid $pid)"
		return 0
	fi
	launch=
	if command -v setsid >/dev/null 2>&1; then
		launch=setsid
	fi
	if [ -n "$run_as" ]; then
		group=$(id -g "$run_as") || return 1
		launch="$launch setpriv --reuid=$run_as --regid=$group --init-groups"
	fi
	(umask 027 && : >>"$log_file") || return 1
	cd / || return 1
	$launch $cmd </dev/null >>"$log_file" 2>&1 &
	echo $! >"$pid_file"
	sleep 1
	if pid=$(running_pid); then
		echo "Started $name (pid $pid), logging to $log_file"
		return 0
	fi
	rm -f "$pid_file"
	echo "$name did not start; the end of $log_file:" >&2
	tail -n 5 "$log_file" >&2
	return 1
}

do_stop() {
	if ! pid=$(running_pid); then
		rm -f "$pid_file"
		echo "$name is not running"
		return 0
	fi
	printf 'Stopping %s (pid %s)' "$name" "$pid"
	kill -TERM "$pid" || return 1
	if sleep 0.1 2>/dev/null; then
		tick=0.2 per=5
	else
		tick=1 per=1
	fi
	n=0
	while running_pid >/dev/null; do
		if [ $n -ge $((stop_seconds * per)) ]; then
			echo " still running after ${stop_seconds}s: sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null
			sleep 1
			if running_pid >/dev/null; then
				echo "$name (pid $pid) did not stop" >&2
				return 1
			fi
			rm -f "$pid_file"
			echo "Killed $name"
			return 0
		fi
		sleep $tick
		n=$((n + 1))
		[ $((n % per)) -eq 0 ] && printf .
	done
	rm -f "$pid_file"
	echo " stopped"
}

do_reload() {
	if ! pid=$(running_pid); then
		echo "$name is not running" >&2
		return 7
	fi
	kill -HUP "$pid" || return 1
	echo "Asked $name (pid $pid) to re-read its configuration (see $log_file)"
}

do_status() {
	if pid=$(running_pid); then
		echo "$name is running (pid $pid)"
		return 0
	fi
	if [ -e "$pid_file" ]; then
		echo "$name is not running (stale pid file $pid_file)"
		return 1
	fi
	echo "$name is not running"
	return 3
}

case "$1" in
start) do_start ;;
stop) do_stop ;;
restart) do_stop && do_start ;;
reload | force-reload) do_reload ;;
status) do_status ;;
*)
	echo "Usage: $0 {start|stop|restart|reload|force-reload|status}" >&2
	exit 2
	;;
esac
`

// sysvStartType reads the start type back: disabled from the script's
// marker, else auto if an S link starts it in a multi-user runlevel.
func sysvStartType(name, script string) string {
	if markedStartType(script) == string(StartDisabled) {
		return string(StartDisabled)
	}
	links, _ := rcLinks(name, "S")
	for _, l := range links {
		if strings.ContainsAny(filepath.Base(filepath.Dir(l)), "2345") {
			return string(StartAuto)
		}
	}
	return string(StartManual)
}

// rcLinks lists the links in /etc/rc?.d that run the init script of name
// (kind "S" or "K", or "" for both), including dangling ones.
func rcLinks(name, kind string) ([]string, error) {
	if kind == "" {
		kind = "[SK]"
	}
	matches, err := filepath.Glob("/etc/rc[0-6S].d/" + kind + "[0-9][0-9]" + name)
	if err != nil {
		return nil, err
	}
	var links []string
	for _, l := range matches {
		target, err := os.Readlink(l)
		if err != nil {
			continue // not a link: not ours
		}
		if target == "/etc/init.d/"+name || target == "../init.d/"+name {
			links = append(links, l)
		}
	}
	return links, nil
}

func removeRCLinks(name, kind string) error {
	links, err := rcLinks(name, kind)
	if err != nil {
		return err
	}
	for _, l := range links {
		if err := os.Remove(l); err != nil {
			return err
		}
	}
	return nil
}

// sysvRunningPID is running_pid of the init script, in Go: the pid in
// pidFile if that process is alive, not a zombie, and runs command's
// executable; else 0.
func sysvRunningPID(pidFile string, command []string) int {
	if len(command) == 0 {
		return 0
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	open, closing := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || closing < open {
		return 0
	}
	comm := filepath.Base(command[0])
	if len(comm) > 15 {
		comm = comm[:15]
	}
	fields := strings.Fields(string(stat[closing+1:]))
	if string(stat[open+1:closing]) != comm || len(fields) == 0 || fields[0] == "Z" {
		return 0
	}
	return pid
}

// runInitScript runs "/etc/init.d/NAME action" the way service(8) does:
// from /, with a clean environment, and (detach) in a session of its own,
// so that the daemon it starts has no controlling terminal. Its standard
// output is copied to out; its standard error becomes the error.
func runInitScript(out io.Writer, name, action string) error {
	script := "/etc/init.d/" + name
	cmd := exec.Command(script, action)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}
	var stderr bytes.Buffer
	cmd.Stdout = out
	cmd.Stderr = &stderr
	detach(cmd)
	if err := cmd.Run(); err != nil {
		if msg := cli.Flatten(stderr.String()); msg != "" {
			return fmt.Errorf("%s %s: %s", script, action, msg)
		}
		return fmt.Errorf("%s %s: %w", script, action, err)
	}
	return nil
}

// ---- upstart and OpenRC ----

func upstartOverridePath(name string) string { return "/etc/init/" + name + ".override" }
func openRCConfPath(name string) string      { return "/etc/conf.d/" + name }

// upstartOverride is /etc/init/NAME.override: the stop timeout, the
// environment that marks the process as a service (kardianos' upstart job
// has no EnvVars), and the start type.
func upstartOverride(spec installSpec) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# smtpq service %s: written by \"smtpq service install\", removed by \"smtpq service uninstall\".\n", spec.name)
	fmt.Fprintf(&b, "%s%s\n", startTypeMarker, spec.start)
	fmt.Fprintf(&b, "kill timeout %d\n", scriptStopSeconds)
	fmt.Fprintf(&b, "env %s=%s\n", serviceEnv, spec.name)
	if spec.start != StartAuto {
		b.WriteString("manual\n")
	}
	if spec.start == StartDisabled {
		fmt.Fprintf(&b, "pre-start script\n\techo \"%s is disabled (installed with --start-type disabled); reinstall it with --start-type manual or auto to start it\" >&2\n\texit 1\nend script\n", spec.name)
	}
	return b.String()
}

// openRCConf is /etc/conf.d/NAME, which openrc-run reads before the script
// kardianos writes: the stop timeout, the user (kardianos' OpenRC script
// ignores UserName) and, for a disabled service, a start_pre that refuses.
func openRCConf(spec installSpec) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# smtpq service %s: written by \"smtpq service install\", removed by \"smtpq service uninstall\".\n", spec.name)
	fmt.Fprintf(&b, "%s%s\n", startTypeMarker, spec.start)
	fmt.Fprintf(&b, "retry=\"TERM/%d/KILL/5\"\n", scriptStopSeconds)
	if spec.user != "" {
		fmt.Fprintf(&b, "command_user=\"%s\"\n", spec.user)
	}
	if spec.start == StartDisabled {
		fmt.Fprintf(&b, "start_pre() {\n\teerror \"%s is disabled (installed with --start-type disabled); reinstall it with --start-type manual or auto to start it\"\n\treturn 1\n}\n", spec.name)
	}
	return b.String()
}

// writeDefinition writes a file of the service definition, replacing it
// atomically.
func writeDefinition(path, text string, mode os.FileMode) error {
	tmp := path + ".smtpq-tmp"
	if err := os.WriteFile(tmp, []byte(text), mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// ---- systemd ----

func inspectSystemd(name, unit string, st *serviceState) (*serviceState, error) {
	st.StartType = string(StartManual)
	if _, err := os.Lstat("/etc/systemd/system/multi-user.target.wants/" + name + ".service"); err == nil {
		st.StartType = string(StartAuto)
	}
	if regexp.MustCompile(`(?m)^RefuseManualStart=(yes|true|1)\s*$`).MatchString(unit) {
		st.StartType = string(StartDisabled)
	}
	out, err := toolOutput("systemctl", "is-active", name+".service")
	state := strings.TrimSpace(out)
	if state == "" && err != nil {
		return nil, err
	}
	switch state {
	case "active", "reloading":
		st.Running = true
	case "inactive":
	default: // activating (auto-restart), deactivating, failed
		st.State = state
	}
	if st.Running {
		if out, err := toolOutput("systemctl", "show", "-p", "MainPID", "--value", name+".service"); err == nil {
			st.PID, _ = strconv.Atoi(strings.TrimSpace(out))
		}
	}
	return st, nil
}

// ---- launchd ----

// launchdStart loads the job if launchd has not (after install, or after
// "service stop", which unloads it), then starts it: loading alone does not
// start a manual job (no RunAtLoad, no KeepAlive).
func launchdStart(name string, st *serviceState) error {
	if _, err := toolOutput("launchctl", "list", name); err != nil {
		if err := runTool("launchctl", "load", st.Definition); err != nil {
			return err
		}
	}
	return runTool("launchctl", "start", name)
}

// launchdDisabled reports whether "launchctl disable system/NAME" is in force.
func launchdDisabled(name string) bool {
	out, err := toolOutput("launchctl", "print-disabled", "system")
	if err != nil {
		return false
	}
	re := regexp.MustCompile(`"` + regexp.QuoteMeta(name) + `"\s*=>\s*(true|disabled)`)
	return re.MatchString(out)
}

// ---- reading the command back ----

// commandFromDefinition returns the command line an installed definition
// runs: ExecStart of a systemd unit, cmd of the SysV script, exec of an
// upstart job, command and command_args of an OpenRC script,
// ProgramArguments of a launchd plist; elsewhere the first line that
// mentions --config.
func commandFromDefinition(platform, text string) []string {
	lines := strings.Split(text, "\n")
	switch platform {
	case platformSystemd:
		for _, l := range lines {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "ExecStart="); ok {
				return splitCommandLine(strings.TrimLeft(rest, "-@:+!"))
			}
		}
	case platformSysV:
		for _, l := range lines {
			if strings.HasPrefix(l, "cmd=") {
				return assignedCommand(l)
			}
		}
	case platformUpstart:
		for _, l := range lines {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "exec "); ok {
				args := splitCommandLine(rest)
				for i, a := range args {
					if strings.HasPrefix(a, ">") || strings.HasPrefix(a, "2>") {
						return args[:i]
					}
				}
				return args
			}
		}
	case platformOpenRC:
		var command []string
		var args []string
		for _, l := range lines {
			l = strings.TrimSpace(l)
			if rest, ok := strings.CutPrefix(l, "command="); ok {
				command = splitCommandLine(rest)
			}
			if rest, ok := strings.CutPrefix(l, "command_args="); ok {
				args = splitCommandLine(rest)
				if len(args) == 1 {
					args = strings.Fields(args[0])
				}
			}
		}
		if command != nil {
			return append(command, args...)
		}
	case platformLaunchd:
		_, after, ok := strings.Cut(text, "<key>ProgramArguments</key>")
		if !ok {
			return nil
		}
		array, _, _ := strings.Cut(after, "</array>")
		var args []string
		for _, m := range regexp.MustCompile(`<string>([^<]*)</string>`).FindAllStringSubmatch(array, -1) {
			args = append(args, html.UnescapeString(m[1]))
		}
		return args
	}
	for _, l := range lines {
		if !strings.Contains(l, "--config") {
			continue
		}
		if name, _, ok := strings.Cut(strings.TrimSpace(l), "="); ok && shellNameRE.MatchString(name) {
			return assignedCommand(l)
		}
		return splitCommandLine(strings.TrimSpace(l))
	}
	return nil
}

var shellNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// assignedCommand reads a shell assignment of a command line, such as
// kardianos' cmd="/usr/bin/smtpq "run" "--config" "/etc/smtpq.yaml"" (the
// quotes concatenate) or smtpq's cmd="/usr/bin/smtpq run --config ...":
// the value, unquoted, split into words.
func assignedCommand(line string) []string {
	_, value, _ := strings.Cut(strings.TrimSpace(line), "=")
	return strings.Fields(strings.Join(splitCommandLine(value), " "))
}

// splitCommandLine splits a command line as a shell or systemd would for
// the simple lines service definitions hold: words separated by blanks,
// "double quotes" with backslash escapes, 'single quotes', and systemd's
// \x20 for a space.
func splitCommandLine(s string) []string {
	var args []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '"':
			inWord = true
			for i++; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				cur.WriteByte(s[i])
			}
		case c == '\'':
			inWord = true
			for i++; i < len(s) && s[i] != '\''; i++ {
				cur.WriteByte(s[i])
			}
		case c == '\\' && strings.HasPrefix(s[i:], `\x20`):
			inWord = true
			cur.WriteByte(' ')
			i += 3
		case c == '\\' && i+1 < len(s):
			inWord = true
			i++
			cur.WriteByte(s[i])
		default:
			inWord = true
			cur.WriteByte(c)
		}
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args
}

// configArg returns the value of --config in args, or "".
func configArg(args []string) string {
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			return v
		}
	}
	return ""
}

// ---- running tools ----

// runTool runs a service manager's tool; its error is one line with what
// the tool said on stderr. launchctl reports some failures with exit status
// 0 and a message, so for it any message is a failure.
func runTool(name string, args ...string) error {
	_, err := toolOutput(name, args...)
	return err
}

// toolOutput runs a tool and returns its standard output, even when it
// exits with a failure (systemctl is-active exits 3 for "inactive").
func toolOutput(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	msg := cli.Flatten(stderr.String())
	if err == nil && name == "launchctl" && msg != "" && !strings.Contains(msg, "Operation now in progress") {
		err = errors.New("failed")
	}
	if err != nil {
		if msg != "" {
			err = errors.New(msg)
		}
		return stdout.String(), fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}

func lookPath(name string) error {
	_, err := exec.LookPath(name)
	return err
}
