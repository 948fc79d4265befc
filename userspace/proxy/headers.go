package proxy

import (
	"strings"
	"unicode/utf8"

	"github.com/wsplice/wsplice/userspace/http1"
)

// hopByHop are the fields that describe one connection, not the message
// (RFC 9110 §7.6.1), plus Trailer (announced anew by whoever writes the
// message on: request trailers go through the transport's Request.Trailer)
// and the Proxy-* family checked in dropper.drop.
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
	// conn and more are the values of the message's Connection fields
	// (more: any after the first, rare), whose tokens name further
	// hop-by-hop fields. Kept as sent and matched in drop: a set built
	// here cost a map and a string per token for every message.
	conn string
	more []string
}

func newDropper(h http1.Header) dropper {
	d := dropper{}
	n := 0
	for _, f := range h {
		if !strings.EqualFold(f.Name, "Connection") {
			continue
		}
		if n == 0 {
			d.conn = f.Value
		} else {
			d.more = append(d.more, f.Value)
		}
		n++
	}
	return d
}

// drop reports whether the field with lower-case name lname is hop-by-hop.
func (d dropper) drop(lname string) bool {
	return hopByHop[lname] || d.listed(lname) || strings.HasPrefix(lname, "proxy-")
}

// listed reports whether a Connection token names lname (compared as
// strings.ToLower(token) == lname), unless lname is protected.
func (d dropper) listed(lname string) bool {
	if d.conn == "" && d.more == nil || protected[lname] {
		return false
	}
	if tokenListed(d.conn, lname) {
		return true
	}
	for _, v := range d.more {
		if tokenListed(v, lname) {
			return true
		}
	}
	return false
}

// tokenListed reports whether the comma-separated list v has an element
// that, trimmed of spaces and tabs, lower-cases to lname.
func tokenListed(v, lname string) bool {
	for v != "" {
		var t string
		t, v, _ = strings.Cut(v, ",")
		if t = strings.Trim(t, " \t"); t != "" && lowerIs(t, lname) {
			return true
		}
	}
	return false
}

// lowerIs reports whether strings.ToLower(s) == lower, without allocating
// when s is ASCII.
func lowerIs(s, lower string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return strings.ToLower(s) == lower
		}
	}
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// appendLower appends strings.ToLower(name) to b. The callers convert it
// back to a string that does not escape, which Go keeps on the stack for
// names up to 32 bytes: lower-casing every field name of every message
// with strings.ToLower cost an allocation per mixed-case name.
func appendLower(b []byte, name string) []byte {
	for i := 0; i < len(name); i++ {
		if name[i] >= utf8.RuneSelf {
			return append(b, strings.ToLower(name)...)
		}
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b
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
	// An empty value lists no hop: appending it would start the list
	// with a bare ", ".
	empty := strings.TrimSpace(value) == ""
	switch lname {
	case "x-forwarded-for":
		if !empty {
			f.forIPs = append(f.forIPs, value)
		}
		return true
	case "forwarded":
		if !empty {
			f.elems = append(f.elems, value)
		}
		return true
	case "x-forwarded-proto", "x-forwarded-host":
		return true
	}
	return false
}

// fields returns the X-Forwarded-* and Forwarded fields for a request
// from the client at ip with Host host, received over proto ("http" or
// "https").
func (f *forwarded) fields(ip, host, proto string) http1.Header {
	return f.appendFields(make(http1.Header, 0, 4), ip, host, proto)
}

// appendFields appends what fields returns to h.
func (f *forwarded) appendFields(h http1.Header, ip, host, proto string) http1.Header {
	xff := ip
	if len(f.forIPs) > 0 {
		xff = strings.Join(f.forIPs, ", ") + ", " + ip
	}
	h = append(h,
		http1.Field{Name: "X-Forwarded-For", Value: xff},
		http1.Field{Name: "X-Forwarded-Proto", Value: proto})
	if host != "" {
		h = append(h, http1.Field{Name: "X-Forwarded-Host", Value: host})
	}
	fwd := forwardedElement(ip, proto, host)
	if len(f.elems) > 0 {
		fwd = strings.Join(f.elems, ", ") + ", " + fwd
	}
	return append(h, http1.Field{Name: "Forwarded", Value: fwd})
}

// forwardedElement is this hop's forwarded-element (RFC 7239 §4):
// for=, proto= and host= (when known). An IPv6 node is bracketed and
// quoted (§6), and any value that is not a token is quoted.
func forwardedElement(ip, proto, host string) string {
	var b strings.Builder
	b.Grow(len("for=\"[]\";proto=;host=\"\"") + len(ip) + len(proto) + 2*len(host))
	b.WriteString("for=")
	if strings.Contains(ip, ":") {
		// Bracketed, so never a token: quoted.
		b.WriteString(`"[`)
		writeEscaped(&b, ip)
		b.WriteString(`]"`)
	} else {
		writeForwardedValue(&b, ip)
	}
	b.WriteString(";proto=")
	writeForwardedValue(&b, proto)
	if host != "" {
		b.WriteString(";host=")
		writeForwardedValue(&b, host)
	}
	return b.String()
}

// writeForwardedValue writes v to b as a token if it is one, else as a
// quoted-string (RFC 9110 §5.6.4), escaping '"' and '\'.
func writeForwardedValue(b *strings.Builder, v string) {
	if v != "" && strings.IndexFunc(v, func(r rune) bool { return !isTchar(r) }) < 0 {
		b.WriteString(v)
		return
	}
	b.WriteByte('"')
	writeEscaped(b, v)
	b.WriteByte('"')
}

// writeEscaped writes v with '"' and '\' escaped (quoted-pair).
func writeEscaped(b *strings.Builder, v string) {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
}

// isTchar reports whether r may appear in a token (RFC 9110 §5.6.2).
func isTchar(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	}
	return strings.ContainsRune("!#$%&'*+-.^_`|~", r)
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
