package config

import (
	"net/url"
	"regexp"
	"strings"
)

// userinfo matches the credentials part of a URL inside free text, such as
// "mongodb://user:secret@host", so that RedactText can mask it.
var userinfo = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@\s:]+)(:[^/@\s]*)?@`)

// RedactURL masks the password of a URL (and of each URL in a comma-separated list, as in
// NATS_URL). Text that is not a URL comes back unchanged.
func RedactURL(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			parts[i] = RedactText(p)
			continue
		}
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// RedactText masks every URL password found in free text, such as an error message that quotes
// a connection string.
func RedactText(s string) string {
	return userinfo.ReplaceAllStringFunc(s, func(m string) string {
		sub := userinfo.FindStringSubmatch(m)
		if sub[3] == "" {
			return m
		}
		return sub[1] + sub[2] + ":xxxxx@"
	})
}
