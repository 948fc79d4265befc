// Package websocket checks the opening handshake of RFC 6455 §4 on both
// sides of the proxy: the client's Upgrade request and the backend's 101.
package websocket

import (
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/wsplice/wsplice/userspace/http1"
)

// Version is the only protocol version spoken (RFC 6455 §4.1).
const Version = "13"

// acceptGUID is the fixed GUID of RFC 6455 §1.3.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// Error is a failed handshake check. Status is the status to answer the
// client with: 400 or 426 for a bad request, 502 for a bad backend
// response. Header holds fields the answer must carry (426 carries
// Sec-WebSocket-Version).
type Error struct {
	Status int
	Reason string
	Header http1.Header
}

func (e *Error) Error() string { return fmt.Sprintf("websocket: %s (%d)", e.Reason, e.Status) }

func badRequest(reason string) error { return &Error{Status: 400, Reason: reason} }

func badResponse(reason string) error { return &Error{Status: 502, Reason: reason} }

// IsUpgrade reports whether a request asks to switch to WebSocket: its
// Connection field has the token "upgrade" and its Upgrade field the token
// "websocket" (both case-insensitive). Other upgrades (h2c) are not ours to
// honour; a proxy forwards those as plain requests without Upgrade.
func IsUpgrade(h http1.Header) bool {
	return h.HasToken("Connection", "upgrade") && h.HasToken("Upgrade", "websocket")
}

// CheckRequest validates a client's opening handshake (RFC 6455 §4.2.1).
// It returns nil or an *Error.
func CheckRequest(r *http1.RequestHead) error {
	switch {
	case r.Method != "GET":
		return badRequest("handshake method is not GET")
	case r.Minor < 1:
		return badRequest("handshake needs HTTP/1.1")
	case !r.Header.HasToken("Upgrade", "websocket"):
		return badRequest("Upgrade has no websocket token")
	case !r.Header.HasToken("Connection", "upgrade"):
		return badRequest("Connection has no upgrade token")
	}
	switch v, n := only(r.Header, "Sec-WebSocket-Version"); {
	case n == 0:
		return badRequest("missing Sec-WebSocket-Version")
	case n > 1:
		// The field must not appear twice in a request (RFC 6455
		// §11.3.5): malformed, not a version to negotiate.
		return badRequest("multiple Sec-WebSocket-Version fields")
	case v != Version:
		return &Error{
			Status: 426,
			Reason: "unsupported Sec-WebSocket-Version",
			Header: http1.Header{{Name: "Sec-WebSocket-Version", Value: Version}},
		}
	}
	key, n := only(r.Header, "Sec-WebSocket-Key")
	switch {
	case n == 0:
		return badRequest("missing Sec-WebSocket-Key")
	case n > 1:
		return badRequest("multiple Sec-WebSocket-Key fields")
	case !validKey(key):
		return badRequest("Sec-WebSocket-Key is not 16 bytes in base64")
	}
	return nil
}

// only returns the value of the first field named name and how many
// there are (Header.Values without the slice).
func only(h http1.Header, name string) (string, int) {
	var v string
	n := 0
	for _, f := range h {
		if strings.EqualFold(f.Name, name) {
			if n == 0 {
				v = f.Value
			}
			n++
		}
	}
	return v, n
}

// strict decodes padded base64 with no stray bits; made once, as
// Encoding.Strict returns a fresh copy at every call.
var strict = base64.StdEncoding.Strict()

// validKey reports whether key is the base64 of exactly 16 bytes.
func validKey(key string) bool {
	if len(key) != base64.StdEncoding.EncodedLen(16) {
		return false
	}
	var b [18]byte // DecodedLen(24)
	n, err := strict.Decode(b[:], []byte(key))
	return err == nil && n == 16
}

// AcceptKey is the Sec-WebSocket-Accept value for a Sec-WebSocket-Key.
func AcceptKey(key string) string {
	var b [acceptLen]byte
	return string(appendAccept(b[:0], key))
}

// acceptLen is the length of a Sec-WebSocket-Accept value: the base64 of a
// SHA-1 sum.
const acceptLen = 28

// appendAccept appends AcceptKey(key) to b, hashing from a stack buffer
// for keys of the usual size.
func appendAccept(b []byte, key string) []byte {
	var in [64]byte
	h := sha1.Sum(append(append(in[:0], key...), acceptGUID...))
	return base64.StdEncoding.AppendEncode(b, h[:])
}

// CheckResponse validates a backend's 101 to a request that carried key
// (RFC 6455 §4.1, the client's checks). It returns nil or an *Error with
// Status 502.
func CheckResponse(r *http1.ResponseHead, key string) error {
	switch {
	case r.Status != 101:
		return badResponse(fmt.Sprintf("backend answered %d, not 101", r.Status))
	case !r.Header.HasToken("Upgrade", "websocket"):
		return badResponse("backend 101 without Upgrade: websocket")
	case !r.Header.HasToken("Connection", "upgrade"):
		return badResponse("backend 101 without Connection: upgrade")
	}
	var want [acceptLen]byte
	if accept, n := only(r.Header, "Sec-WebSocket-Accept"); n != 1 || accept != string(appendAccept(want[:0], key)) {
		return badResponse("backend 101 with wrong Sec-WebSocket-Accept")
	}
	return nil
}
