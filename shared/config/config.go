// Package config loads a service's settings from one specification: every key is declared once
// with its default and meaning, and its value comes from, in falling precedence, a command-line
// flag, the environment, a .env file, and the default.
//
// A key such as MONGO_URI is read from the environment variable MONGO_URI, from the line
// MONGO_URI=... of the .env file, and from the flag --mongo-uri.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// EnvFileKey names the environment variable that points at the .env file to read. When it is
// not set, ./.env is read if it exists.
const EnvFileKey = "ENV_FILE"

// Key declares one configuration key.
type Key struct {
	// Name is the key in upper snake case, such as MONGO_URI.
	Name string
	// Default is the value used when no flag, variable or .env line sets the key.
	Default string
	// Usage says what the key means, in one sentence.
	Usage string
	// Secret marks a key whose value never appears in logs or printed settings.
	Secret bool
	// Group names the part of the product the key belongs to, for documentation.
	Group string
}

// FlagName returns the command-line flag that sets the key: MONGO_URI becomes mongo-uri.
func (k Key) FlagName() string {
	return strings.ReplaceAll(strings.ToLower(k.Name), "_", "-")
}

// Values holds the loaded settings of one service.
type Values struct {
	v     *viper.Viper
	keys  map[string]Key
	flags *pflag.FlagSet
	// Args holds the command-line arguments left after the flags.
	Args []string
}

// Load reads the keys from flags in args, the environment and the .env file. The name is the
// program's name, used in usage messages. It returns pflag.ErrHelp when -h or --help was given.
func Load(name string, keys []Key, args []string, extra ...func(*pflag.FlagSet)) (*Values, error) {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SortFlags = false
	for _, k := range keys {
		fs.String(k.FlagName(), "", fmt.Sprintf("%s (env %s, default %q)", k.Usage, k.Name,
			k.Default))
	}
	for _, add := range extra {
		add(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return FromFlagSet(keys, fs)
}

// FromFlagSet loads the keys from an already parsed flag set that holds one string flag per key.
func FromFlagSet(keys []Key, fs *pflag.FlagSet) (*Values, error) {
	v := viper.New()
	if err := readEnvFile(v); err != nil {
		return nil, err
	}
	vals := &Values{v: v, keys: make(map[string]Key, len(keys)), flags: fs, Args: fs.Args()}
	for _, k := range keys {
		vals.keys[k.Name] = k
		v.SetDefault(k.Name, k.Default)
		if err := v.BindEnv(k.Name); err != nil {
			return nil, fmt.Errorf("bind env %s: %w", k.Name, err)
		}
		if f := fs.Lookup(k.FlagName()); f != nil {
			if err := v.BindPFlag(k.Name, f); err != nil {
				return nil, fmt.Errorf("bind flag %s: %w", k.FlagName(), err)
			}
		}
	}
	return vals, nil
}

// readEnvFile reads the .env file named by ENV_FILE, or ./.env when it exists.
func readEnvFile(v *viper.Viper) error {
	path := os.Getenv(EnvFileKey)
	explicit := path != ""
	if !explicit {
		path = ".env"
	}
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) && !explicit {
			return nil
		}
		return fmt.Errorf("read env file %s: %w", path, err)
	}
	v.SetConfigFile(path)
	v.SetConfigType("env")
	if err := v.ReadInConfig(); err != nil {
		return fmt.Errorf("read env file %s: %w", path, err)
	}
	return nil
}

// lookup returns the string value of a declared key. Asking for an undeclared key is a
// programming error and panics, so that a misspelt name is found by the first test.
func (c *Values) lookup(name string) string {
	if _, ok := c.keys[name]; !ok {
		panic(fmt.Sprintf("config: key %s is not declared", name))
	}
	val := strings.TrimSpace(c.v.GetString(name))
	if val == "" {
		// A flag or variable that is present but empty falls back to the default.
		return c.keys[name].Default
	}
	return val
}

// Explicit reports whether a key was set by a flag, the environment or the .env file, as
// opposed to falling back to its default. An empty value counts as not set.
func (c *Values) Explicit(name string) bool {
	k, ok := c.keys[name]
	if !ok {
		panic(fmt.Sprintf("config: key %s is not declared", name))
	}
	if f := c.flags.Lookup(k.FlagName()); f != nil && f.Changed && f.Value.String() != "" {
		return true
	}
	if v, ok := os.LookupEnv(name); ok && strings.TrimSpace(v) != "" {
		return true
	}
	return c.v.InConfig(name) && strings.TrimSpace(c.v.GetString(name)) != ""
}

// String returns the value of a key.
func (c *Values) String(name string) string { return c.lookup(name) }

// Strings returns a comma-separated key as a list, without empty items.
func (c *Values) Strings(name string) []string {
	var out []string
	for _, part := range strings.Split(c.lookup(name), ",") {
		if p := strings.TrimSpace(part); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Int returns the value of a key as an integer.
func (c *Values) Int(name string) (int, error) {
	var n int
	if _, err := fmt.Sscan(c.lookup(name), &n); err != nil {
		return 0, fmt.Errorf("%s: %q is not a whole number", name, c.lookup(name))
	}
	return n, nil
}

// Duration returns the value of a key as a duration such as 30s or 5m.
func (c *Values) Duration(name string) (time.Duration, error) {
	d, err := time.ParseDuration(c.lookup(name))
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a duration (such as 30s): %w", name, c.lookup(name),
			err)
	}
	return d, nil
}

// Bool returns the value of a key as a boolean (true, false, 1, 0, yes, no).
func (c *Values) Bool(name string) (bool, error) {
	switch strings.ToLower(c.lookup(name)) {
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off", "":
		return false, nil
	}
	return false, fmt.Errorf("%s: %q is not true or false", name, c.lookup(name))
}

// Redacted returns every key with its value, secrets and URL passwords masked, sorted by name,
// for a start-up log line.
func (c *Values) Redacted() map[string]string {
	out := make(map[string]string, len(c.keys))
	names := make([]string, 0, len(c.keys))
	for n := range c.keys {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		val := c.lookup(n)
		switch {
		case c.keys[n].Secret && val != "":
			val = "***"
		default:
			val = RedactURL(val)
		}
		out[n] = val
	}
	return out
}

// EnvExample renders keys as the lines of a .env.example file, grouped, each with its meaning.
func EnvExample(keys []Key) string {
	var b strings.Builder
	group := "\x00"
	for _, k := range keys {
		if k.Group != group {
			if group != "\x00" {
				b.WriteString("\n")
			}
			group = k.Group
			fmt.Fprintf(&b, "# --- %s ---\n", k.Group)
		}
		fmt.Fprintf(&b, "# %s\n%s=%s\n", k.Usage, k.Name, k.Default)
	}
	return b.String()
}

// MarkdownTable renders keys as a Markdown table (key, default, meaning), one section per group,
// for the README.
func MarkdownTable(keys []Key) string {
	var b strings.Builder
	group := "\x00"
	for _, k := range keys {
		if k.Group != group {
			group = k.Group
			fmt.Fprintf(&b, "\n**%s**\n\n| key | default | meaning |\n| --- | --- | --- |\n", group)
		}
		def := "`" + k.Default + "`"
		if k.Default == "" {
			def = "(empty)"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", k.Name, def, strings.ReplaceAll(k.Usage, "|", "\\|"))
	}
	return b.String()
}
