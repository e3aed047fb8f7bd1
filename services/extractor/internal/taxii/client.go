// Package taxii is a TAXII 2.1 client made for the servers people really meet: it asks for the
// TAXII 2.1 media type, authenticates with basic auth, a bearer token or a client certificate,
// goes through HTTPS_PROXY, limits its request rate, retries what a retry can fix (with
// Retry-After honoured on 429 and 503 and jittered exponential back-off otherwise), and answers
// everything else with an error that names the URL, the status and the start of the body.
//
// The package never logs; a caller that wants to hear about retries gives Options.OnRetry.
package taxii

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"
)

// MediaType is the TAXII 2.1 media type the client asks for.
const MediaType = "application/taxii+json;version=2.1"

// MITREHost is the host of MITRE's public TAXII 2.1 server.
const MITREHost = "attack-taxii.mitre.org"

// MITREURL is the API root of MITRE's public TAXII 2.1 server.
const MITREURL = "https://attack-taxii.mitre.org/api/v21/"

// retiredHosts are TAXII servers that were shut down, with the address to use instead.
var retiredHosts = map[string]string{
	"cti-taxii.mitre.org": MITREURL,
}

// MITRERequestsPerMinute is the default request rate for MITRE's server. MITRE allows 50
// requests per 10 minutes per client address (10 before June 2026); 4 a minute with a burst of
// 5 stays below 50 in any 10-minute window.
const MITRERequestsPerMinute = 4

// mitreBurst is the burst allowed against MITRE's server: a whole sync of the three ATT&CK
// collections (collections plus one request each) runs without waiting.
const mitreBurst = 5

// DefaultRequestsPerMinute returns the request rate used when none is configured: MITRE's
// published limit for its host, no limit (0) elsewhere.
func DefaultRequestsPerMinute(host string) float64 {
	if strings.EqualFold(hostOnly(host), MITREHost) {
		return MITRERequestsPerMinute
	}
	return 0
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// Options configures a Client. The zero value works: no auth, system CAs, HTTPS_PROXY from
// the environment, 120 s time-out, 4 retries from 1 s, the default rate for the host.
type Options struct {
	// User and Password enable HTTP basic authentication.
	User, Password string
	// Token is sent as "Authorization: Bearer <token>".
	Token string
	// CAFile is a PEM file of CAs to trust besides the system's.
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and key for mutual TLS.
	CertFile, KeyFile string
	// Timeout bounds one request, body included.
	Timeout time.Duration
	// Retries is how many times a failed request is tried again.
	Retries int
	// RetryBase is the first back-off wait; it doubles, with jitter, on each retry.
	RetryBase time.Duration
	// MaxRetryWait bounds a wait asked for by Retry-After; a longer one fails the request.
	// Zero means 15 minutes.
	MaxRetryWait time.Duration
	// RequestsPerMinute limits the request rate; 0 takes DefaultRequestsPerMinute for the
	// host, a negative value turns the limit off.
	RequestsPerMinute float64
	// Proxy picks the proxy of a request; nil means http.ProxyFromEnvironment (HTTPS_PROXY,
	// HTTP_PROXY, NO_PROXY).
	Proxy func(*http.Request) (*url.URL, error)
	// MaxBodyBytes bounds one answer's body; 0 means 2 GiB.
	MaxBodyBytes int64
	// OnRetry, when set, is called before each wait for a retry.
	OnRetry func(Retry)
	// OnRequest, when set, is called after each HTTP request (each attempt).
	OnRequest func(Request)
}

// Retry describes a request about to be tried again.
type Retry struct {
	URL     string
	Attempt int
	Wait    time.Duration
	// Kind is a short label of the failure: http_<status>, timeout, network, cut_off or
	// bad_json.
	Kind   string
	Reason string
}

// Request describes one HTTP request made.
type Request struct {
	URL string
	// Operation is discovery, collections or objects, from the URL's path.
	Operation string
	// Status is the HTTP status, 0 when no answer came.
	Status int
	Took   time.Duration
}

// operation names the TAXII operation of a URL.
func operation(u string) string {
	p := u
	if pu, err := url.Parse(u); err == nil {
		p = pu.Path
	}
	switch {
	case strings.HasSuffix(p, "/objects/"):
		return "objects"
	case strings.HasSuffix(p, "/manifest/"):
		return "manifest"
	case strings.HasSuffix(p, "/collections/"):
		return "collections"
	}
	return "discovery"
}

// Client talks to one TAXII 2.1 server. It is safe for concurrent use.
type Client struct {
	http     *http.Client
	opts     Options
	limiter  *rate.Limiter
	requests atomic.Int64
	// secrets masks the credentials in text quoted from answers: a server that echoes the
	// Authorization header in an error page must not put it in our errors and logs.
	secrets *strings.Replacer
}

// New returns a client for the server of base, the configured discovery or API root URL. User
// information in base is used for basic authentication when Options.User is empty. It fails
// fast, without a request, when base names a retired server.
func New(base string, o Options) (*Client, error) {
	u, err := CheckURL(base)
	if err != nil {
		return nil, err
	}
	if o.User == "" && u.User != nil {
		o.User = u.User.Username()
		o.Password, _ = u.User.Password()
	}
	if o.Timeout <= 0 {
		o.Timeout = 120 * time.Second
	}
	if o.RetryBase <= 0 {
		o.RetryBase = time.Second
	}
	if o.MaxRetryWait <= 0 {
		o.MaxRetryWait = 15 * time.Minute
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 2 << 30
	}
	if o.Proxy == nil {
		o.Proxy = http.ProxyFromEnvironment
	}
	tlsCfg, err := tlsConfig(o)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = o.Proxy
	tr.TLSClientConfig = tlsCfg
	c := &Client{http: &http.Client{Transport: tr}, opts: o, secrets: secretsReplacer(o)}
	rpm := o.RequestsPerMinute
	if rpm == 0 {
		rpm = DefaultRequestsPerMinute(u.Host)
	}
	if rpm > 0 {
		burst := 1
		if strings.EqualFold(hostOnly(u.Host), MITREHost) && rpm <= MITRERequestsPerMinute {
			burst = mitreBurst
		}
		c.limiter = rate.NewLimiter(rate.Limit(rpm/60), burst)
	}
	return c, nil
}

// CheckURL parses a TAXII URL and refuses what cannot work: a scheme other than http or https,
// no host, or a retired server (with the address to use instead).
func CheckURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return nil, fmt.Errorf("TAXII URL %q: %w", StripCredentials(raw), err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("TAXII URL %q: scheme must be http or https",
			StripCredentials(raw))
	}
	if u.Host == "" {
		return nil, fmt.Errorf("TAXII URL %q: no host", StripCredentials(raw))
	}
	if repl, ok := retiredHosts[strings.ToLower(hostOnly(u.Host))]; ok {
		return nil, fmt.Errorf("%w: %s served TAXII 2.0 and has been shut down; use the TAXII "+
			"2.1 server %s instead (TAXII_API_URL=%s)", ErrRetired, u.Host, repl, repl)
	}
	return u, nil
}

// StripCredentials returns a URL without its user information, for logs and headers. Text that
// is not a URL comes back unchanged.
func StripCredentials(raw string) string {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.User == nil {
		return raw
	}
	u.User = nil
	return u.String()
}

func secretsReplacer(o Options) *strings.Replacer {
	var pairs []string
	add := func(s string) {
		if len(s) >= 3 {
			pairs = append(pairs, s, "xxxxx")
		}
	}
	add(o.Token)
	add(o.Password)
	if o.User != "" {
		add(base64.StdEncoding.EncodeToString([]byte(o.User + ":" + o.Password)))
	}
	return strings.NewReplacer(pairs...)
}

func tlsConfig(o Options) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read TAXII CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TAXII CA file %s holds no PEM certificate", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	if o.CertFile != "" || o.KeyFile != "" {
		if o.CertFile == "" || o.KeyFile == "" {
			return nil, errors.New("TAXII client certificate needs both TAXII_CERT_FILE and " +
				"TAXII_KEY_FILE")
		}
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load TAXII client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Requests returns how many HTTP requests the client has sent, retries included.
func (c *Client) Requests() int64 { return c.requests.Load() }

// answer is a successful response's headers.
type answer struct {
	Header http.Header
}

// retryable marks an error that a new attempt may cure; wait, when set, is the server's
// Retry-After.
type retryable struct {
	err  error
	wait time.Duration
	kind string
}

func (r *retryable) Error() string { return r.err.Error() }
func (r *retryable) Unwrap() error { return r.err }

// get fetches u with the TAXII media type and decodes the JSON answer into into, retrying
// what a retry can cure.
func (c *Client) get(ctx context.Context, u string, into any) (answer, error) {
	var last error
	attempts := max(c.opts.Retries, 0) + 1
	for attempt := 1; attempt <= attempts; attempt++ {
		if c.limiter != nil {
			if err := c.limiter.Wait(ctx); err != nil {
				return answer{}, fmt.Errorf("GET %s: wait for the request rate limit: %w", u, err)
			}
		}
		ans, err := c.once(ctx, u, into)
		if err == nil {
			return ans, nil
		}
		var r *retryable
		if !errors.As(err, &r) {
			return answer{}, err
		}
		last = r.err
		if ctx.Err() != nil {
			return answer{}, fmt.Errorf("%w (%w)", ctx.Err(), last)
		}
		if attempt == attempts {
			break
		}
		wait := r.wait
		if wait == 0 {
			wait = c.backoff(attempt)
		}
		if wait > c.opts.MaxRetryWait {
			return answer{}, fmt.Errorf("server asks to wait %s, more than the %s allowed: %w",
				wait, c.opts.MaxRetryWait, last)
		}
		if c.opts.OnRetry != nil {
			c.opts.OnRetry(Retry{URL: u, Attempt: attempt, Wait: wait, Kind: r.kind,
				Reason: last.Error()})
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return answer{}, fmt.Errorf("%w (%w)", ctx.Err(), last)
		case <-t.C:
		}
	}
	return answer{}, fmt.Errorf("gave up after %d attempts: %w", attempts, last)
}

// backoff returns the jittered exponential wait before retry number attempt (from 1): between
// half and all of base * 2^(attempt-1).
func (c *Client) backoff(attempt int) time.Duration {
	d := c.opts.RetryBase << min(attempt-1, 16)
	half := d / 2
	return half + rand.N(half+1)
}

// once makes one request.
func (c *Client) once(ctx context.Context, u string, into any) (answer, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return answer{}, fmt.Errorf("GET %s: %w", u, err)
	}
	req.Header.Set("Accept", MediaType)
	req.Header.Set("User-Agent", "attack-etl-extractor")
	switch {
	case c.opts.Token != "":
		req.Header.Set("Authorization", "Bearer "+c.opts.Token)
	case c.opts.User != "":
		req.SetBasicAuth(c.opts.User, c.opts.Password)
	}
	c.requests.Add(1)
	start := time.Now()
	status := 0
	if c.opts.OnRequest != nil {
		defer func() {
			c.opts.OnRequest(Request{URL: u, Operation: operation(u), Status: status,
				Took: time.Since(start)})
		}()
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return answer{}, &retryable{kind: "timeout",
				err: fmt.Errorf("GET %s: no answer within %s", u, c.opts.Timeout)}
		}
		return answer{}, &retryable{kind: "network", err: fmt.Errorf("GET %s: %w", u, err)}
	}
	defer resp.Body.Close()
	status = resp.StatusCode
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.opts.MaxBodyBytes))
	if err != nil {
		why := err.Error()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			why = fmt.Sprintf("body not complete within %s", c.opts.Timeout)
		}
		return answer{}, &retryable{kind: "cut_off", err: fmt.Errorf(
			"GET %s: %s: body cut off after %d bytes: %s", u, resp.Status, len(body), why)}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		herr := &HTTPError{Method: http.MethodGet, URL: u, Status: resp.StatusCode,
			StatusText: resp.Status, Body: c.quote(body)}
		switch {
		case resp.StatusCode == http.StatusTooManyRequests ||
			resp.StatusCode == http.StatusServiceUnavailable:
			return answer{}, &retryable{err: herr, kind: "http_" + strconv.Itoa(resp.StatusCode),
				wait: retryAfter(resp.Header.Get("Retry-After"))}
		case resp.StatusCode >= 500, resp.StatusCode == http.StatusRequestTimeout:
			return answer{}, &retryable{err: herr, kind: "http_" + strconv.Itoa(resp.StatusCode)}
		}
		return answer{}, herr
	}
	if err := c.checkMediaType(resp.Header.Get("Content-Type"), body); err != nil {
		return answer{}, fmt.Errorf("GET %s: %s: %w", u, resp.Status, err)
	}
	if err := json.Unmarshal(body, into); err != nil {
		// A TAXII answer that is not valid JSON was most likely cut off on the way.
		return answer{}, &retryable{kind: "bad_json", err: fmt.Errorf(
			"GET %s: %s: invalid JSON after %d bytes (cut off?): %v: body starts %q", u,
			resp.Status, len(body), err, c.quote(body))}
	}
	return answer{Header: resp.Header}, nil
}

// quote returns the start of a body for an error message, credentials masked.
func (c *Client) quote(body []byte) string { return c.secrets.Replace(bodyStart(body)) }

// checkMediaType accepts the TAXII and STIX media types and plain JSON; a missing type is
// accepted when the body looks like a JSON object. Anything else, such as an HTML error page
// sent with status 200, is ErrNotTAXII quoting the start of the body.
func (c *Client) checkMediaType(ct string, body []byte) error {
	if strings.TrimSpace(ct) == "" {
		if b := strings.TrimSpace(string(body[:min(len(body), 64)])); strings.HasPrefix(b, "{") {
			return nil
		}
		return fmt.Errorf("%w: no content type and the body starts %q", ErrNotTAXII,
			c.quote(body))
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil {
		switch mt {
		case "application/taxii+json", "application/stix+json", "application/json",
			"application/vnd.oasis.taxii+json", "application/vnd.oasis.stix+json":
			return nil
		}
	}
	return fmt.Errorf("%w: content type %q, body starts %q", ErrNotTAXII, ct, c.quote(body))
}

// bodyStart returns the first 200 bytes of a body as valid UTF-8 on one line.
func bodyStart(b []byte) string {
	const n = 200
	s := b
	if len(s) > n {
		s = s[:n]
	}
	out := strings.ToValidUTF8(string(s), "?")
	for len(out) > 0 && !utf8.ValidString(out) {
		out = out[:len(out)-1]
	}
	out = strings.Join(strings.Fields(out), " ")
	if len(b) > n {
		out += "..."
	}
	return out
}

// retryAfter reads a Retry-After header: seconds or an HTTP date. Zero means absent or
// unreadable, and the caller falls back to its own back-off.
func retryAfter(h string) time.Duration {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0
	}
	if s, err := strconv.Atoi(h); err == nil && s >= 0 {
		return max(time.Duration(s)*time.Second, time.Millisecond)
	}
	if t, err := http.ParseTime(h); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
		return time.Millisecond
	}
	return 0
}
