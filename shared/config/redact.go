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
		// A connection string without its scheme, such as user:secret@host, still carries a
		// password.
		return bareUserinfo.ReplaceAllString(s, "$1$2:xxxxx@")
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

// bareUserinfo matches user:password@ at the start of a text or after a space, a comma or a
// quote, as in a connection string written without its scheme.
var bareUserinfo = regexp.MustCompile(`(^|[\s,"'])([^\s/@:,"']+):[^\s/@,"']*@`)

// RedactText masks every URL password found in free text, such as an error message that quotes
// a connection string, with or without its scheme.
func RedactText(s string) string {
	s = bareUserinfo.ReplaceAllString(s, "$1$2:xxxxx@")
	return userinfo.ReplaceAllStringFunc(s, func(m string) string {
		sub := userinfo.FindStringSubmatch(m)
		if sub[3] == "" {
			return m
		}
		return sub[1] + sub[2] + ":xxxxx@"
	})
}
