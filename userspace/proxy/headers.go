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
	// elems holds earlier Forwarded values (RFC 7239), in order.
	elems []string
}

// take reports whether the field is an X-Forwarded-* or Forwarded one the
// proxy replaces, remembering X-Forwarded-For and Forwarded values to
// append to (as another proxy would). A client's X-Forwarded-Proto and
// -Host are not trusted.
func (f *forwarded) take(lname, value string) bool {
	switch lname {
	case "x-forwarded-for":
		f.forIPs = append(f.forIPs, value)
		return true
	case "forwarded":
		f.elems = append(f.elems, value)
		return true
	case "x-forwarded-proto", "x-forwarded-host":
		return true
	}
	return false
}

// fields returns the X-Forwarded-* and Forwarded fields for a request
// from client with Host host, received over proto ("http" or "https").
func (f *forwarded) fields(client net.Addr, host, proto string) http1.Header {
	ip := clientIP(client)
	h := http1.Header{
		{Name: "X-Forwarded-For", Value: strings.Join(append(f.forIPs, ip), ", ")},
		{Name: "X-Forwarded-Proto", Value: proto},
	}
	if host != "" {
		h = append(h, http1.Field{Name: "X-Forwarded-Host", Value: host})
	}
	h = append(h, http1.Field{Name: "Forwarded", Value: strings.Join(append(f.elems, forwardedElement(ip, proto, host)), ", ")})
	return h
}

// forwardedElement is this hop's forwarded-element (RFC 7239 §4):
// for=, proto= and host= (when known). An IPv6 node is bracketed and
// quoted (§6), and any value that is not a token is quoted.
func forwardedElement(ip, proto, host string) string {
	node := ip
	if strings.Contains(ip, ":") {
		node = "[" + ip + "]"
	}
	e := "for=" + forwardedValue(node) + ";proto=" + forwardedValue(proto)
	if host != "" {
		e += ";host=" + forwardedValue(host)
	}
	return e
}

// forwardedValue returns v as a token if it is one, else as a
// quoted-string (RFC 9110 §5.6.4), escaping '"' and '\'.
func forwardedValue(v string) string {
	if v != "" && strings.IndexFunc(v, func(r rune) bool { return !isTchar(r) }) < 0 {
		return v
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String()
}

// isTchar reports whether r may appear in a token (RFC 9110 §5.6.2).
func isTchar(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	}
	return strings.ContainsRune("!#$%&'*+-.^_`|~", r)
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
