package jobs

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// store persists jobs in bbolt, one transaction per change, so a job's
// record is always whole. Two buckets:
//
//	jobs:  job id → JSON job
//	order: created (unix nanos, big endian) + job id → nothing, for newest-first listing
var (
	jobsBucket  = []byte("jobs")
	orderBucket = []byte("order")
)

type store struct{ db *bolt.DB }

func openStore(path string) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open job store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{jobsBucket, orderBucket} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open job store %s: %w", path, err)
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

func orderKey(j *Job) []byte {
	k := make([]byte, 8, 8+len(j.ID))
	binary.BigEndian.PutUint64(k, uint64(j.Created.UnixNano()))
	return append(k, j.ID...)
}

func (s *store) put(j *Job) error {
	data, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(jobsBucket).Put([]byte(j.ID), data); err != nil {
			return err
		}
		return tx.Bucket(orderBucket).Put(orderKey(j), nil)
	})
}

func (s *store) get(id string) (*Job, error) {
	var j *Job
	err := s.db.View(func(tx *bolt.Tx) error {
		data := tx.Bucket(jobsBucket).Get([]byte(id))
		if data == nil {
			return ErrNotFound
		}
		j = new(Job)
		return json.Unmarshal(data, j)
	})
	return j, err
}

// all returns every job (used at start-up to find unfinished jobs).
func (s *store) all() ([]*Job, error) {
	var out []*Job
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(jobsBucket).ForEach(func(_, v []byte) error {
			j := new(Job)
			if err := json.Unmarshal(v, j); err != nil {
				return err
			}
			out = append(out, j)
			return nil
		})
	})
	return out, err
}

// ErrBadPageToken: a page token that this store did not issue.
var ErrBadPageToken = errors.New("invalid page token")

// list returns up to limit jobs newest first that match keep, starting after
// the page token, and the token of the next page ("" at the end).
func (s *store) list(pageToken string, limit int, keep func(*Job) bool) ([]*Job, string, error) {
	var after []byte
	if pageToken != "" {
		var err error
		if after, err = base64.RawURLEncoding.DecodeString(pageToken); err != nil || len(after) < 9 {
			return nil, "", ErrBadPageToken
		}
	}
	var (
		out  []*Job
		next string
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(orderBucket).Cursor()
		jobs := tx.Bucket(jobsBucket)
		var k []byte
		if after == nil {
			k, _ = c.Last()
		} else {
			// Seek lands on after or the first key past it; step back to the one before.
			if k, _ = c.Seek(after); k == nil {
				k, _ = c.Last()
			} else {
				k, _ = c.Prev()
			}
		}
		for ; k != nil; k, _ = c.Prev() {
			data := jobs.Get(k[8:])
			if data == nil {
				continue
			}
			j := new(Job)
			if err := json.Unmarshal(data, j); err != nil {
				return err
			}
			if !keep(j) {
				continue
			}
			if len(out) == limit {
				next = base64.RawURLEncoding.EncodeToString(lastKey(out))
				return nil
			}
			out = append(out, j)
		}
		return nil
	})
	return out, next, err
}

func lastKey(jobs []*Job) []byte { return orderKey(jobs[len(jobs)-1]) }
