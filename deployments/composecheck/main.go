// Command composecheck loads compose files the way Docker Compose v2 does, through its own
// loader (github.com/compose-spec/compose-go/v2), and fails on what `docker compose up` would
// refuse: a schema or interpolation error, a bad merge of an override file, a dependency on a
// service that no active profile enables, or two services publishing the same host port. Debian's
// docker-compose v1 checks the same files against the older rules; validate-compose.sh runs
// both, since no Docker engine (and so no compose plugin) runs on the build machines.
//
// Usage, from the folder that holds the compose files and .env:
//
//	composecheck [-profile name]... -f docker-compose.yml [-f override.yml]... [-env service]
//
// With -env, it prints the environment the service's containers get (env_file and environment
// merged, interpolated), one KEY=value line each, sorted: what a test needs to start the
// service's binary as a process with the compose file's settings. With -dotenv FILE, FILE
// (such as .env.example in a fresh clone) stands for the .env the stack reads.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "composecheck:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("composecheck", flag.ContinueOnError)
	var files, profiles list
	fs.Var(&files, "f", "compose file (repeat for override files, in order)")
	fs.Var(&profiles, "profile", "profile to enable (repeatable)")
	envOf := fs.String("env", "", "print the resolved environment of this service instead")
	dotenv := fs.String("dotenv", "", "file to use as the stack's .env (default: the .env "+
		"next to the first compose file)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(files) == 0 {
		return errors.New("no compose file: give -f docker-compose.yml")
	}
	workDir := ""
	if *dotenv != "" {
		dir, err := stageDotEnv(*dotenv)
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		workDir = dir
		for i, f := range files {
			if files[i], err = filepath.Abs(f); err != nil {
				return fmt.Errorf("compose file %s: %w", f, err)
			}
		}
	}
	opts, err := cli.NewProjectOptions(files,
		cli.WithWorkingDirectory(workDir),
		cli.WithOsEnv,
		cli.WithDotEnv,
		cli.WithName("attack-etl"),
		cli.WithProfiles(profiles),
	)
	if err != nil {
		return fmt.Errorf("compose options: %w", err)
	}
	project, err := opts.LoadProject(ctx)
	if err != nil {
		return fmt.Errorf("load %s: %w", files, err)
	}
	if err := checkHostPorts(project); err != nil {
		return err
	}
	if *envOf != "" {
		return printEnv(project, *envOf, out)
	}
	names := project.ServiceNames()
	sort.Strings(names)
	for _, name := range names {
		s := project.Services[name]
		replicas := 1
		if s.Deploy != nil && s.Deploy.Replicas != nil {
			replicas = *s.Deploy.Replicas
		}
		var deps []string
		for d, cfg := range s.DependsOn {
			deps = append(deps, d+"("+cfg.Condition+")")
		}
		sort.Strings(deps)
		fmt.Fprintf(out, "%-12s replicas=%d image=%s depends_on=[%s]\n", name, replicas, s.Image,
			strings.Join(deps, " "))
	}
	return nil
}

// stageDotEnv copies file as .env into a new scratch folder, which becomes the project's
// working directory: env_file: .env and the interpolation of ${VAR} then read it. Relative
// paths of the compose files then point into that folder, which is harmless since nothing here
// reads the files they name.
func stageDotEnv(file string) (string, error) {
	body, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("dotenv: %w", err)
	}
	dir, err := os.MkdirTemp("", "composecheck-")
	if err != nil {
		return "", fmt.Errorf("dotenv: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".env"), body, 0o600); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("dotenv: %w", err)
	}
	return dir, nil
}

// printEnv writes the resolved environment of one service, sorted, as KEY=value lines. A
// variable declared without a value is printed with an empty one.
func printEnv(p *types.Project, service string, out io.Writer) error {
	s, err := p.GetService(service)
	if err != nil {
		return fmt.Errorf("environment of %s: %w", service, err)
	}
	keys := make([]string, 0, len(s.Environment))
	for k := range s.Environment {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := ""
		if p := s.Environment[k]; p != nil {
			v = *p
		}
		fmt.Fprintf(out, "%s=%s\n", k, v)
	}
	return nil
}

// checkHostPorts fails when two enabled services publish the same host address and port.
// The replicas of one service share its range, so a service is compared only with the others.
func checkHostPorts(p *types.Project) error {
	owner := map[string]string{}
	for _, name := range p.ServiceNames() {
		for _, port := range p.Services[name].Ports {
			if port.Published == "" {
				continue
			}
			for _, hp := range expand(port.Published) {
				key := port.HostIP + ":" + hp + "/" + port.Protocol
				if other, ok := owner[key]; ok && other != name {
					return fmt.Errorf("host port %s is published by both %s and %s", key, other,
						name)
				}
				owner[key] = name
			}
		}
	}
	return nil
}

// expand turns a published port or range ("9103-9105") into its ports.
func expand(published string) []string {
	lo, hi, ok := strings.Cut(published, "-")
	if !ok {
		return []string{published}
	}
	var a, b int
	if _, err := fmt.Sscan(lo, &a); err != nil {
		return []string{published}
	}
	if _, err := fmt.Sscan(hi, &b); err != nil || b < a {
		return []string{published}
	}
	var out []string
	for p := a; p <= b; p++ {
		out = append(out, fmt.Sprint(p))
	}
	return out
}
