package proxy

import (
	"net"
	"strings"

	"github.com/wsplice/wsplice/userspace/http1"
)

// hopByHop are the fields that describe one connection, not the message
// (RFC 9110 §7.6.1), plus Trailer (request trailers are not forwarded) and
// the Proxy-* family checked in dropper.drop.
var hopByHop = map[string]bool{
	"connection":        true,
	"keep-alive":        true,
	"proxy-connection":  true,
	"te":                true,
	"transfer-encoding": true,
	"upgrade":           true,
	"trailer":           true,
}

// protected fields survive being listed in Connection: a client naming
// them there could otherwise strip what the backend needs to frame or
// answer the request.
var protected = map[string]bool{
	"host":                     true,
	"content-length":           true,
	"sec-websocket-key":        true,
	"sec-websocket-version":    true,
	"sec-websocket-protocol":   true,
	"sec-websocket-extensions": true,
	"sec-websocket-accept":     true,
}

// dropper decides which fields of one message are hop-by-hop.
type dropper struct {
	listed map[string]bool
}

func newDropper(h http1.Header) dropper {
	d := dropper{}
	for _, t := range h.Tokens("Connection") {
		t = strings.ToLower(t)
		if !protected[t] {
			if d.listed == nil {
				d.listed = make(map[string]bool)
			}
			d.listed[t] = true
		}
	}
	return d
}

// drop reports whether the field with lower-case name lname is hop-by-hop.
func (d dropper) drop(lname string) bool {
	return hopByHop[lname] || d.listed[lname] || strings.HasPrefix(lname, "proxy-")
}

// forwarded are the fields the proxy sets itself.
type forwarded struct {
	// forIPs holds earlier X-Forwarded-For values, in order.
	forIPs []string
}

// take reports whether the field is an X-Forwarded-* one the proxy
// replaces, remembering X-Forwarded-For values to append to. A client's
// X-Forwarded-Proto and -Host are not trusted.
func (f *forwarded) take(lname, value string) bool {
	switch lname {
	case "x-forwarded-for":
		f.forIPs = append(f.forIPs, value)
		return true
	case "x-forwarded-proto", "x-forwarded-host":
		return true
	}
	return false
}

// fields returns the X-Forwarded-* fields for a request from client with
// Host host, received over proto ("http" or "https").
func (f *forwarded) fields(client net.Addr, host, proto string) http1.Header {
	ip := clientIP(client)
	h := http1.Header{
		{Name: "X-Forwarded-For", Value: strings.Join(append(f.forIPs, ip), ", ")},
		{Name: "X-Forwarded-Proto", Value: proto},
	}
	if host != "" {
		h = append(h, http1.Field{Name: "X-Forwarded-Host", Value: host})
	}
	return h
}

func clientIP(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// originForm turns a request-target into the origin-form a backend gets
// ("/path?query"), and returns the authority of an absolute-form target,
// which overrides Host (RFC 9112 §3.2.2).
func originForm(target string) (origin, authority string) {
	if target == "" || target[0] == '/' || target == "*" {
		return target, ""
	}
	_, rest, ok := strings.Cut(target, "://")
	if !ok {
		return target, ""
	}
	i := strings.IndexAny(rest, "/?")
	if i < 0 {
		return "/", rest
	}
	origin = rest[i:]
	if origin[0] == '?' {
		origin = "/" + origin
	}
	return origin, rest[:i]
}
