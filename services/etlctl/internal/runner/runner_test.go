package runner

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLastWarning(t *testing.T) {
	tests := []struct {
		name, log, want string
	}{
		{name: "no log", log: "", want: ""},
		{name: "only info",
			log:  `{"level":"info","msg":"loading","documents":500}` + "\n",
			want: ""},
		{name: "last warning with its error, password masked",
			log: `{"level":"warn","msg":"old","error":"x"}` + "\n" +
				`{"level":"warn","msg":"cannot reach MongoDB; retrying",` +
				`"error":"dial mongodb://ana:s3cret@db:27017: refused"}` + "\n" +
				`{"level":"info","msg":"still trying"}` + "\n",
			want: "cannot reach MongoDB; retrying (dial mongodb://ana:xxxxx@db:27017: refused)"},
		{name: "an error without an error field",
			log:  `{"level":"error","msg":"dead letter not stored"}` + "\nnot json\n",
			want: "dead letter not stored"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "loader-1.log")
			if tc.log != "" {
				if err := os.WriteFile(path, []byte(tc.log), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := lastWarning(path); got != tc.want {
				t.Errorf("lastWarning = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLogPathKeepsThePreviousRun(t *testing.T) {
	r := &run{localDir: t.TempDir()}
	first := r.logPath("loader-1")
	if err := os.WriteFile(first, []byte("earlier run\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	second := r.logPath("loader-1")
	if second != first {
		t.Fatalf("log path changed: %s, then %s", first, second)
	}
	if _, err := os.Stat(second); !os.IsNotExist(err) {
		t.Errorf("the earlier run's log is still where this run writes: %v", err)
	}
	if b, err := os.ReadFile(second + ".prev"); err != nil || string(b) != "earlier run\n" {
		t.Errorf("previous log = %q, %v", b, err)
	}
}
