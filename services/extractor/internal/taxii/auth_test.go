package taxii_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/services/extractor/internal/taxii"
	"github.com/attack-etl/attack-etl/services/extractor/internal/taxiitest"
)

func TestAuthentication(t *testing.T) {
	tests := []struct {
		name     string
		url      func(base string) string
		opts     taxii.Options
		wantAuth string
	}{
		{name: "server asks for HTTP basic auth", opts: taxii.Options{User: "ana", Password: "s3cret"},
			wantAuth: "Basic YW5hOnMzY3JldA=="},
		{name: "credentials in the URL become basic auth and never reach a message",
			url: func(b string) string {
				return strings.Replace(b, "http://", "http://ana:s3cret@", 1)
			},
			wantAuth: "Basic YW5hOnMzY3JldA=="},
		{name: "server asks for a bearer token", opts: taxii.Options{Token: "tok-123"},
			wantAuth: "Bearer tok-123"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := taxiitest.New(slice(t))
			defer srv.Close()
			srv.Fault = func(w http.ResponseWriter, r *http.Request) bool {
				if r.Header.Get("Authorization") != tc.wantAuth {
					http.Error(w, "unauthorized", http.StatusUnauthorized)
					return true
				}
				return false
			}
			u := srv.RootURL()
			if tc.url != nil {
				u = tc.url(u)
			}
			o := tc.opts
			o.RetryBase = time.Millisecond
			c, err := taxii.New(u, o)
			if err != nil {
				t.Fatal(err)
			}
			roots, _, err := c.Resolve(context.Background(), u)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(roots[0].URL, "s3cret") {
				t.Errorf("root URL %s keeps the password", roots[0].URL)
			}
			// A failing request's error must not quote the password either.
			srv.Fault = func(w http.ResponseWriter, _ *http.Request) bool {
				http.Error(w, "gone", http.StatusGone)
				return true
			}
			_, _, err = c.Resolve(context.Background(), u)
			if err == nil || strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error %v: want one without the password", err)
			}
		})
	}
}

// writePEM writes a PEM block to a file in dir and returns its path.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	block := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(p, block, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// clientCert makes a self-signed client certificate and returns it with its files.
func clientCert(t *testing.T, dir string) (*x509.Certificate, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "extractor-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, IsCA: true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return cert, writePEM(t, dir, "client.pem", "CERTIFICATE", der),
		writePEM(t, dir, "client-key.pem", "EC PRIVATE KEY", kder)
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	cert, certFile, keyFile := clientCert(t, dir)
	col := slice(t)
	inner := taxiitest.New(col)
	defer inner.Close()
	srv := httptest.NewUnstartedServer(inner.Config.Handler)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv.StartTLS()
	defer srv.Close()
	caFile := writePEM(t, dir, "ca.pem", "CERTIFICATE", srv.Certificate().Raw)
	root := srv.URL + "/api/v21/"
	tests := []struct {
		name    string
		opts    taxii.Options
		wantErr bool
	}{
		{name: "server with a private CA and client certificates: both given",
			opts: taxii.Options{CAFile: caFile, CertFile: certFile, KeyFile: keyFile}},
		{name: "server with a private CA: CA not given fails",
			opts: taxii.Options{CertFile: certFile, KeyFile: keyFile}, wantErr: true},
		{name: "server that requires a client certificate: none given fails",
			opts: taxii.Options{CAFile: caFile}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.RetryBase = time.Millisecond
			o.Retries = 1
			c, err := taxii.New(root, o)
			if err != nil {
				t.Fatal(err)
			}
			cols, err := c.Collections(context.Background(), root)
			if tc.wantErr {
				if err == nil {
					t.Fatal("want a TLS error")
				}
				return
			}
			if err != nil || len(cols) != 1 {
				t.Fatalf("collections %v, %v", cols, err)
			}
		})
	}
	if _, err := taxii.New(root, taxii.Options{CertFile: certFile}); err == nil {
		t.Error("a certificate without its key must be refused")
	}
	if _, err := taxii.New(root, taxii.Options{CAFile: keyFile}); err == nil {
		t.Error("a CA file without a certificate must be refused")
	}
}

// TestProxyFromEnvironment runs itself again with HTTP_PROXY set (the standard library reads
// the proxy variables once per process), and checks that the request for a remote TAXII host
// went to the proxy.
func TestProxyFromEnvironment(t *testing.T) {
	if target := os.Getenv("EXTRACTOR_PROXY_CHILD"); target != "" {
		c, err := taxii.New(target, taxii.Options{Retries: 0})
		if err != nil {
			t.Fatal(err)
		}
		cols, err := c.Collections(context.Background(), target)
		if err != nil {
			t.Fatal(err)
		}
		if len(cols) != 1 {
			t.Fatalf("collections = %d", len(cols))
		}
		return
	}
	srv := taxiitest.New(slice(t))
	defer srv.Close()
	var proxied []string
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied = append(proxied, r.URL.String())
		// Forward to the test server whatever host the client asked for.
		u, _ := url.Parse(srv.URL)
		r.URL.Scheme, r.URL.Host = u.Scheme, u.Host
		r.RequestURI = ""
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			_, _ = w.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}))
	defer proxy.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestProxyFromEnvironment$")
	cmd.Env = append(os.Environ(), "EXTRACTOR_PROXY_CHILD=http://taxii.example.test/api/v21/",
		"HTTP_PROXY="+proxy.URL, "http_proxy="+proxy.URL, "NO_PROXY=", "no_proxy=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	want := "http://taxii.example.test/api/v21/collections/"
	if len(proxied) != 1 || proxied[0] != want {
		t.Fatalf("proxy saw %q, want [%s]", proxied, want)
	}
}
