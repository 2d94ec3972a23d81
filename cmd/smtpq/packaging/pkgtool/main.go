// Command pkgtool builds smtpq's release files from binaries that "go build"
// made: the Debian package (through nfpm, as a library, from nfpm.yaml
// beside this folder), plain archives (tar.gz, zip for Windows) and the
// SHA256SUMS file. The Makefile runs it from the top of the checkout (make
// deb, make release); it needs no network.
//
//	pkgtool deb -bin FILE -arch amd64|arm64 -version V -out DIR
//	pkgtool archive -bin FILE -goos OS -goarch ARCH -version V -out DIR
//	pkgtool sums DIR
//	pkgtool debversion GIT_DESCRIBE
//	pkgtool msiversion GIT_DESCRIBE
//
// It prints the path of each file it writes.
package main

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
)

// nfpmConfig is the package definition, relative to the top of the checkout.
const nfpmConfig = "cmd/smtpq/packaging/nfpm.yaml"

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "deb":
		err = debCmd(args)
	case "archive":
		err = archiveCmd(args)
	case "sums":
		if len(args) != 1 {
			usage()
		}
		err = writeSums(args[0])
	case "debversion":
		if len(args) != 1 {
			usage()
		}
		fmt.Println(debVersion(args[0]))
	case "msiversion":
		if len(args) != 1 {
			usage()
		}
		fmt.Println(msiVersion(args[0]))
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pkgtool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: pkgtool deb|archive|sums|debversion|msiversion ... (see the source)")
	os.Exit(2)
}

var semverRe = regexp.MustCompile(`^v?(\d+)\.(\d+)\.(\d+)(.*)$`)

// debVersion turns "git describe" output into a Debian version: v1.2.3 is
// 1.2.3, v1.2.3-4-gabc is 1.2.3+git4.gabc, and a bare commit (no tag yet)
// is 0.0.0~gabc, which sorts before any release. "-dirty" becomes
// "+dirty" (or ".dirty").
func debVersion(describe string) string {
	d := strings.TrimSpace(describe)
	dirty := strings.HasSuffix(d, "-dirty")
	d = strings.TrimSuffix(d, "-dirty")
	var v string
	if m := semverRe.FindStringSubmatch(d); m != nil {
		v = m[1] + "." + m[2] + "." + m[3]
		rest := m[4]
		if g := regexp.MustCompile(`^(.*)-(\d+)-g([0-9a-f]+)$`).FindStringSubmatch(rest); g != nil {
			v += debSafe(g[1]) + "+git" + g[2] + ".g" + g[3]
		} else {
			v += debSafe(rest)
		}
	} else {
		v = "0.0.0~" + debSafe(d)
		if d == "" {
			v = "0.0.0~dev"
		}
	}
	if dirty {
		if strings.Contains(v, "+") {
			v += ".dirty"
		} else {
			v += "+dirty"
		}
	}
	return v
}

// debSafe keeps the characters a Debian upstream version may hold; a
// pre-release "-rc1" becomes "~rc1" so that it sorts before the release.
func debSafe(s string) string {
	s = strings.Replace(s, "-", "~", 1)
	return regexp.MustCompile(`[^0-9A-Za-z.+~]`).ReplaceAllString(s, ".")
}

// msiVersion is the major.minor.build that Windows Installer compares
// (each field a number): from a v1.2.3 tag, else 0.0.0.
func msiVersion(describe string) string {
	if m := semverRe.FindStringSubmatch(strings.TrimSpace(describe)); m != nil {
		return m[1] + "." + m[2] + "." + m[3]
	}
	return "0.0.0"
}

func debCmd(args []string) error {
	fs := flag.NewFlagSet("deb", flag.ExitOnError)
	bin := fs.String("bin", "", "the linux smtpq binary to package")
	arch := fs.String("arch", "amd64", "Debian architecture (amd64, arm64)")
	version := fs.String("version", "", "Debian version (pkgtool debversion)")
	out := fs.String("out", "dist", "output folder")
	fs.Parse(args)
	if *bin == "" || *version == "" {
		return errors.New("-bin and -version are required")
	}
	env := map[string]string{"SMTPQ_BIN": *bin, "ARCH": *arch, "VERSION": *version}
	cfg, err := nfpm.ParseFileWithEnvMapping(nfpmConfig, func(k string) string { return env[k] })
	if err != nil {
		return fmt.Errorf("%s: %w", nfpmConfig, err)
	}
	info, err := cfg.Get("deb")
	if err != nil {
		return err
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return err
	}
	pkg, err := nfpm.Get("deb")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	name := filepath.Join(*out, pkg.ConventionalFileName(info))
	return writeFile(name, func(w io.Writer) error { return pkg.Package(info, w) })
}

// writeFile writes name through a temporary file, so that a failed build
// leaves no half package behind, and prints its path.
func writeFile(name string, fill func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), ".pkgtool-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := fill(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return err
	}
	fmt.Println(name)
	return nil
}

// archiveCmd writes smtpq_<version>_<os>_<arch>.tar.gz (.zip for Windows)
// holding a folder of the same name with the binary and README.md.
func archiveCmd(args []string) error {
	fs := flag.NewFlagSet("archive", flag.ExitOnError)
	bin := fs.String("bin", "", "the smtpq binary")
	goos := fs.String("goos", "", "GOOS of the binary")
	goarch := fs.String("goarch", "", "GOARCH of the binary")
	version := fs.String("version", "", "version for the file name")
	out := fs.String("out", "dist", "output folder")
	fs.Parse(args)
	if *bin == "" || *goos == "" || *goarch == "" || *version == "" {
		return errors.New("-bin, -goos, -goarch and -version are required")
	}
	base := fmt.Sprintf("smtpq_%s_%s_%s", *version, *goos, *goarch)
	exe := "smtpq"
	if *goos == "windows" {
		exe = "smtpq.exe"
	}
	members := []member{{base + "/" + exe, *bin, 0o755}, {base + "/README.md", "README.md", 0o644}}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	mtime := buildTime()
	if *goos == "windows" {
		return writeFile(filepath.Join(*out, base+".zip"), func(w io.Writer) error { return writeZip(w, members, mtime) })
	}
	return writeFile(filepath.Join(*out, base+".tar.gz"), func(w io.Writer) error { return writeTarGz(w, members, mtime) })
}

type member struct {
	name, src string
	mode      os.FileMode
}

// buildTime is $SOURCE_DATE_EPOCH if set (reproducible archives), else now.
func buildTime() time.Time {
	var sec int64
	if _, err := fmt.Sscan(os.Getenv("SOURCE_DATE_EPOCH"), &sec); err == nil && sec > 0 {
		return time.Unix(sec, 0).UTC()
	}
	return time.Now().UTC().Truncate(time.Second)
}

func writeTarGz(w io.Writer, members []member, mtime time.Time) error {
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	for _, m := range members {
		data, err := os.ReadFile(m.src)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: m.name, Mode: int64(m.mode), Size: int64(len(data)), ModTime: mtime,
			Typeflag: tar.TypeReg, Uname: "root", Gname: "root", Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

func writeZip(w io.Writer, members []member, mtime time.Time) error {
	zw := zip.NewWriter(w)
	for _, m := range members {
		data, err := os.ReadFile(m.src)
		if err != nil {
			return err
		}
		hdr := &zip.FileHeader{Name: m.name, Method: zip.Deflate, Modified: mtime}
		hdr.SetMode(m.mode)
		f, err := zw.CreateHeader(hdr)
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			return err
		}
	}
	return zw.Close()
}

// writeSums writes DIR/SHA256SUMS for the regular files in DIR, in the
// format "sha256sum -c" reads.
func writeSums(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() && e.Name() != "SHA256SUMS" && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		f, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), n)
	}
	return writeFile(filepath.Join(dir, "SHA256SUMS"), func(w io.Writer) error {
		_, err := io.WriteString(w, b.String())
		return err
	})
}
