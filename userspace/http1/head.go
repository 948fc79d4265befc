// Package http1 reads HTTP/1.1 message heads strictly.
//
// wsplice owns this parser instead of using net/http's because a load
// balancer must reject the message shapes that let a client smuggle a second
// request past it (RFC 9112 §6.3, §11.2): net/http, for one, silently drops
// Content-Length when Transfer-Encoding is present. Everything ambiguous is
// an error carrying the status a server answers with.
//
// Line endings: every line must end in CRLF. A bare LF, or a CR not followed
// by LF, is rejected (400) everywhere: in request and status lines, header
// fields, chunk-size lines and trailers. RFC 9112 §2.2 allows a recipient to
// accept a bare LF, but accepting it in one hop and not the next is a
// classic smuggling vector, and every client worth serving sends CRLF.
package http1

import (
	"fmt"
	"net/textproto"
	"strconv"
	"strings"
)

// DefaultMaxHeaderBytes bounds a head when the caller passes max <= 0.
const DefaultMaxHeaderBytes = 16 << 10

// Error is a message head or body framing the parser rejects. Status is the
// HTTP status a server answers with: 431 for an oversized request head, 400
// for a malformed request, 502 for a malformed response (the proxy answers a
// broken backend with 502).
type Error struct {
	Status int
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("http1: %s (%d)", e.Reason, e.Status) }

// Field is one header field: the name as sent and the value without
// surrounding whitespace.
type Field struct {
	Name  string
	Value string
}

// Header holds the fields of a head in the order they were sent.
type Header []Field

// CanonicalName is the canonical form of a header name ("content-type" →
// "Content-Type"), for lookups and display; Header keeps names as sent.
func CanonicalName(name string) string { return textproto.CanonicalMIMEHeaderKey(name) }

// Get returns the value of the first field named name (case-insensitive),
// or "".
func (h Header) Get(name string) string {
	for _, f := range h {
		if strings.EqualFold(f.Name, name) {
			return f.Value
		}
	}
	return ""
}

// Has reports whether a field named name is present.
func (h Header) Has(name string) bool {
	for _, f := range h {
		if strings.EqualFold(f.Name, name) {
			return true
		}
	}
	return false
}

// Values returns the values of every field named name, in order.
func (h Header) Values(name string) []string {
	var vs []string
	for _, f := range h {
		if strings.EqualFold(f.Name, name) {
			vs = append(vs, f.Value)
		}
	}
	return vs
}

// HasToken reports whether any field named name holds token in its
// comma-separated list, compared case-insensitively ("Connection:
// keep-alive, Upgrade" has the token "upgrade").
func (h Header) HasToken(name, token string) bool {
	for _, f := range h {
		if !strings.EqualFold(f.Name, name) {
			continue
		}
		// The elements of strings.Split(f.Value, ","), without the slice.
		for v := f.Value; ; {
			t, rest, more := strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
			if !more {
				break
			}
			v = rest
		}
	}
	return false
}

// Tokens returns every comma-separated element of the fields named name,
// trimmed and without empty elements.
func (h Header) Tokens(name string) []string {
	var ts []string
	for _, f := range h {
		if !strings.EqualFold(f.Name, name) {
			continue
		}
		for _, t := range strings.Split(f.Value, ",") {
			if t = strings.Trim(t, " \t"); t != "" {
				ts = append(ts, t)
			}
		}
	}
	return ts
}

// appendFields writes the fields as "Name: Value\r\n" lines.
func (h Header) appendFields(b []byte) []byte {
	for _, f := range h {
		b = append(b, f.Name...)
		b = append(b, ": "...)
		b = append(b, f.Value...)
		b = append(b, "\r\n"...)
	}
	return b
}

// RequestHead is a parsed request line and header section.
type RequestHead struct {
	Method string
	// Target is the request-target exactly as sent.
	Target string
	// Major and Minor are the HTTP version; Major is always 1.
	Major, Minor int
	Header       Header
	// Host is the single Host field's value ("" if an HTTP/1.0 request
	// has none).
	Host string
	// ContentLength is the body length, -1 when there is no
	// Content-Length field.
	ContentLength int64
	// Chunked is set when the body uses the chunked transfer coding.
	Chunked bool
	// Size is the number of bytes the head took on the wire.
	Size int
}

// Proto is "HTTP/1.x".
func (r *RequestHead) Proto() string { return "HTTP/1." + strconv.Itoa(r.Minor) }

// HasBody reports whether a body follows the head.
func (r *RequestHead) HasBody() bool { return r.Chunked || r.ContentLength > 0 }

// WantsClose reports whether the client asked for the connection to close
// after this request: "Connection: close", or HTTP/1.0 without keep-alive.
func (r *RequestHead) WantsClose() bool {
	if r.Header.HasToken("Connection", "close") {
		return true
	}
	return r.Minor == 0 && !r.Header.HasToken("Connection", "keep-alive")
}

// Append writes the head in wire form (CRLF line endings, "Name: Value").
func (r *RequestHead) Append(b []byte) []byte {
	b = append(b, r.Method...)
	b = append(b, ' ')
	b = append(b, r.Target...)
	b = append(b, ' ')
	b = append(b, r.Proto()...)
	b = append(b, "\r\n"...)
	b = r.Header.appendFields(b)
	return append(b, "\r\n"...)
}

// ResponseHead is a parsed status line and header section.
type ResponseHead struct {
	Major, Minor int
	Status       int
	Reason       string
	Header       Header
	// ContentLength is the body length, -1 when there is no
	// Content-Length field.
	ContentLength int64
	// Chunked is set when the body uses the chunked transfer coding.
	Chunked bool
	// Size is the number of bytes the head took on the wire.
	Size int
}

// Proto is "HTTP/1.x".
func (r *ResponseHead) Proto() string { return "HTTP/1." + strconv.Itoa(r.Minor) }

// Append writes the head in wire form.
func (r *ResponseHead) Append(b []byte) []byte {
	b = append(b, r.Proto()...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, ' ')
	b = append(b, r.Reason...)
	b = append(b, "\r\n"...)
	b = r.Header.appendFields(b)
	return append(b, "\r\n"...)
}

// Bodyless reports whether a response to a request with the given method
// never has a body, whatever its header says (RFC 9112 §6.3 rules 1 and 2).
func (r *ResponseHead) Bodyless(method string) bool {
	return method == "HEAD" || (r.Status >= 100 && r.Status < 200) || r.Status == 204 || r.Status == 304
}
