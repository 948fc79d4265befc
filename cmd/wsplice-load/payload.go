package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Every message carries its connection id and sequence number in its first
// 16 bytes; the rest is a pattern derived from both, so an echo can be
// regenerated and compared byte for byte: a lost, duplicated, reordered or
// corrupted byte anywhere fails the comparison.
const payloadHeader = 16

// fillPayload writes message (conn, seq) into b (len(b) >= payloadHeader).
func fillPayload(b []byte, conn uint32, seq uint64) {
	binary.LittleEndian.PutUint64(b[0:], uint64(conn)<<32|0x5753) // "WS" tag in the low bits
	binary.LittleEndian.PutUint64(b[8:], seq)
	// xorshift64 stream seeded by (conn, seq), eight bytes per step.
	x := seq*0x9E3779B97F4A7C15 ^ uint64(conn)<<17 ^ 0xD1B54A32D192ED03
	i := payloadHeader
	for ; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	for ; i < len(b); i++ {
		b[i] = byte(x >> (8 * (i & 7)))
	}
}

// verifier regenerates expected messages for one connection.
type verifier struct {
	conn uint32
	want []byte
}

func (v *verifier) check(got []byte, size int, seq uint64) error {
	if len(got) != size {
		return fmt.Errorf("%w: conn %d seq %d: echo of %d bytes, sent %d", errIntegrity, v.conn, seq, len(got), size)
	}
	if cap(v.want) < size {
		v.want = make([]byte, size)
	}
	w := v.want[:size]
	fillPayload(w, v.conn, seq)
	if !bytes.Equal(got, w) {
		gotSeq := binary.LittleEndian.Uint64(got[8:])
		return fmt.Errorf("%w: conn %d seq %d: echo differs (carries seq %d)", errIntegrity, v.conn, seq, gotSeq)
	}
	return nil
}
