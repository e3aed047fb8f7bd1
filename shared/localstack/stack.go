package localstack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options says which services to start and where.
type Options struct {
	// Dir holds every service's data and logs; it is created when missing.
	Dir string
	// BinDir holds nats-server and ferretdb (built by make tools); PATH is searched next.
	BinDir string
	// NATS and Mongo say which services to start.
	NATS, Mongo bool
	// NATSAddr, MongoAddr and PostgresAddr are the wished addresses; a busy or empty one is
	// replaced by a free loopback port.
	NATSAddr, MongoAddr, PostgresAddr string
	// Backend is FerretDB's storage: postgresql (the default) or sqlite. When PostgreSQL's
	// programs are missing, sqlite is used.
	Backend string
}

// Stack is a set of running local services.
type Stack struct {
	// NATSURL and MongoURI are the URLs of the started services, empty when not started.
	NATSURL, MongoURI string
	// Backend is the FerretDB back end in use.
	Backend string
	// NATS, Postgres and FerretDB are the processes, nil when not started.
	NATS, Postgres, FerretDB *Proc

	// dir and lock are the folder and its lock, held until Stop.
	dir  string
	lock *os.File
}

// Start starts the services the options ask for. On error, what was started is stopped. When
// another process runs a stack on the same folder, Start returns a *RunningError (matching
// ErrRunning) that gives that stack's URLs.
func Start(ctx context.Context, o Options) (*Stack, error) {
	// Absolute paths: PostgreSQL resolves its socket folder from its data folder.
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("local stack folder: %w", err)
	}
	o.Dir = dir
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("local stack folder: %w", err)
	}
	lock, err := lockDir(o.Dir)
	if err != nil {
		return nil, err
	}
	s := &Stack{dir: o.Dir, lock: lock}
	ok := false
	defer func() {
		if !ok {
			s.Stop()
		}
	}()
	if o.NATS {
		if err := s.startNATS(ctx, o); err != nil {
			return nil, err
		}
	}
	if o.Mongo {
		if err := s.startMongo(ctx, o); err != nil {
			return nil, err
		}
	}
	if err := s.writeInfo(o.Dir); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

func (s *Stack) startNATS(ctx context.Context, o Options) error {
	bin, err := FindBinary(o.BinDir, "nats-server")
	if err != nil {
		return err
	}
	addr, err := addrOrFree(o.NATSAddr)
	if err != nil {
		return err
	}
	host, port, _ := strings.Cut(addr, ":")
	store := filepath.Join(o.Dir, "nats")
	s.NATS = &Proc{
		Name: "nats-server", Path: bin, Addr: addr, LogPath: filepath.Join(o.Dir, "nats.log"),
		Args: []string{"--jetstream", "--store_dir", store, "--addr", host, "--port", port,
			"--http_port", "0", "--server_name", "attack-etl-local"},
	}
	if err := s.NATS.Start(ctx); err != nil {
		return err
	}
	s.NATSURL = "nats://" + addr
	return nil
}

func (s *Stack) startMongo(ctx context.Context, o Options) error {
	bin, err := FindBinary(o.BinDir, "ferretdb")
	if err != nil {
		return err
	}
	addr, err := addrOrFree(o.MongoAddr)
	if err != nil {
		return err
	}
	s.Backend = o.Backend
	if s.Backend == "" {
		s.Backend = "postgresql"
	}
	args := []string{"--listen-addr", addr, "--handler", s.Backend}
	switch s.Backend {
	case "postgresql":
		pgURL, err := s.startPostgres(ctx, o)
		if errors.Is(err, errNoPostgres) {
			s.Backend = "sqlite"
			return s.startMongo(ctx, Options{Dir: o.Dir, BinDir: o.BinDir, MongoAddr: addr,
				Backend: "sqlite"})
		}
		if err != nil {
			return err
		}
		args = append(args, "--postgresql-url", pgURL)
	case "sqlite":
		dir := filepath.Join(o.Dir, "sqlite")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("sqlite folder: %w", err)
		}
		args = append(args, "--sqlite-url", "file:"+dir+"/")
	default:
		return fmt.Errorf("FerretDB back end %q: want postgresql or sqlite", s.Backend)
	}
	s.FerretDB = &Proc{Name: "ferretdb", Path: bin, Args: args, Addr: addr,
		LogPath: filepath.Join(o.Dir, "ferretdb.log")}
	if err := s.FerretDB.Start(ctx); err != nil {
		return err
	}
	s.MongoURI = "mongodb://" + addr + "/"
	return nil
}

var errNoPostgres = errors.New("PostgreSQL programs not found")

// postgresBin finds the folder of initdb and postgres: Debian keeps them under
// /usr/lib/postgresql/<version>/bin, off PATH.
func postgresBin() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Strings(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], nil
		}
	}
	return "", errNoPostgres
}

// startPostgres starts a private PostgreSQL cluster for FerretDB and returns its URL. It runs
// with fsync off: the cluster holds a local copy that the pipeline can always reload.
func (s *Stack) startPostgres(ctx context.Context, o Options) (string, error) {
	bin, err := postgresBin()
	if err != nil {
		return "", err
	}
	addr, err := addrOrFree(o.PostgresAddr)
	if err != nil {
		return "", err
	}
	host, port, _ := strings.Cut(addr, ":")
	data := filepath.Join(o.Dir, "postgres")
	sock := filepath.Join(o.Dir, "postgres-run")
	cred, err := postgresCredential()
	if err != nil {
		return "", err
	}
	if cred != nil {
		if err := openPath(filepath.Dir(data)); err != nil {
			return "", err
		}
	}
	for _, d := range []string{data, sock} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", fmt.Errorf("postgres folder: %w", err)
		}
		if cred != nil {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				return "", fmt.Errorf("postgres folder: %w", err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err != nil {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
			"--auth=trust", "--encoding=UTF8", "--no-sync")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("initdb %s: %w: %s", data, err, tail(out))
		}
	}
	s.Postgres = &Proc{
		Name: "postgres", Path: filepath.Join(bin, "postgres"), Addr: addr, Cred: cred,
		LogPath: filepath.Join(o.Dir, "postgres.log"),
		Args: []string{"-D", data, "-p", port, "-k", sock, "-c", "listen_addresses=" + host,
			"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
			"-c", "max_connections=200", "-c", "shared_buffers=256MB"},
	}
	if err := s.Postgres.Start(ctx); err != nil {
		return "", err
	}
	// The port opens before the cluster accepts logins; give it a moment to finish recovery.
	time.Sleep(300 * time.Millisecond)
	return "postgres://postgres@" + addr + "/postgres", nil
}

// postgresCredential returns the postgres user's ids when running as root, since PostgreSQL
// refuses to run as root; nil otherwise.
func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// openPath lets other users traverse (not list) every folder from dir up to the root, so that
// PostgreSQL, which runs as the postgres user, reaches its data folder inside a private folder
// of root's such as a test's temporary folder. Only folders the current user owns are changed.
func openPath(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("postgres folder: %w", err)
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if ok && int(sys.Uid) == os.Geteuid() && st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, st.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("let postgres reach %s: %w", dir, err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// Stop stops every started service, the database server last.
func (s *Stack) Stop() {
	for _, p := range []*Proc{s.NATS, s.FerretDB, s.Postgres} {
		if p != nil {
			p.Stop(15 * time.Second)
		}
	}
	if s.lock != nil {
		_ = os.Remove(filepath.Join(s.dir, infoFile))
		_ = s.lock.Close() // releases the lock
		s.lock = nil
	}
}

func tail(b []byte) string {
	const n = 500
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
