// Package redisbudget keeps the budget several backup-proxy agents share in
// Redis (scheduler.SharedBudget): the tenant share and the per-app minute
// limits as sliding windows updated by one Lua script, so that the agents
// together send no more than one would, and the cooldowns (Retry-After,
// tenant pauses) as keys that expire with them plus a pub/sub message, so
// that every agent honours a throttle another one received.
//
// The windows count real time on the Redis server's clock (TIME), the one
// clock all agents agree on.
package redisbudget

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/scheduler"
)

// Client returns a Redis client for url (redis://host:port/db) with the
// short timeouts the shared budget needs: an agent that cannot reach Redis
// falls back to its local share instead of waiting.
func Client(url string) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opt.DialTimeout = 250 * time.Millisecond
	opt.ReadTimeout = 250 * time.Millisecond
	opt.WriteTimeout = 250 * time.Millisecond
	opt.MaxRetries = 0 // the scheduler retries, on its fallback share meanwhile
	opt.PoolSize = 8
	return redis.NewClient(opt), nil
}

// SetLogger sends go-redis's own messages (reconnection attempts) to log at
// Debug: the scheduler reports Redis going and coming back once, at Warn,
// and plain-text lines on stderr would break the agent's JSON log. go-redis
// has one logger per process.
func SetLogger(log *zap.Logger) { redis.SetLogger(zapPrintf{log.Named("go-redis").Sugar()}) }

type zapPrintf struct{ l *zap.SugaredLogger }

func (z zapPrintf) Printf(_ context.Context, format string, v ...any) { z.l.Debugf(format, v...) }

// Budget is the shared state of all tenants in one Redis database.
type Budget struct {
	log    *zap.Logger
	client redis.UniversalClient
	prefix string
}

// New returns the shared budget in client's database. Keys start with
// prefix ("backup-proxy:" if empty), so that one Redis can serve several
// agent fleets.
func New(log *zap.Logger, client redis.UniversalClient, prefix string) *Budget {
	if log == nil {
		log = zap.NewNop()
	}
	if prefix == "" {
		prefix = "backup-proxy:"
	}
	return &Budget{log: log.Named("redisbudget"), client: client, prefix: prefix}
}

// Tenant returns the shared budget of one tenant.
func (b *Budget) Tenant(tenantID string) *Tenant {
	p := b.prefix + tenantID + ":"
	return &Tenant{b: b, log: b.log.With(zap.String("tenant_id", tenantID)),
		windows: p + "win:", cools: p + "cool:", channel: p + "cooldowns"}
}

// Tenant is one tenant's shared budget; it implements scheduler.SharedBudget.
type Tenant struct {
	b                       *Budget
	log                     *zap.Logger
	windows, cools, channel string
}

var _ scheduler.SharedBudget = (*Tenant)(nil)

// takeScript takes RU from sliding windows of slots (a hash: slot index →
// RU) on the server's clock. For each key, ARGV holds limit, slot length
// (µs), slot count and the RU wanted; it answers granted and used per key.
// Slots that left the window are deleted; the key expires a slot after the
// window, so idle tenants leave nothing behind.
var takeScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[4*i-3])
  local slot = tonumber(ARGV[4*i-2])
  local slots = tonumber(ARGV[4*i-1])
  local want = tonumber(ARGV[4*i])
  local cur = math.floor(now / slot)
  local h = redis.call('HGETALL', key)
  local used = 0
  for j = 1, #h, 2 do
    local idx = tonumber(h[j])
    if idx <= cur - slots then
      redis.call('HDEL', key, h[j])
    else
      used = used + tonumber(h[j+1])
    end
  end
  local g = math.min(want, math.max(limit - used, 0))
  if g > 0 then
    redis.call('HINCRBY', key, tostring(cur), g)
    used = used + g
  end
  redis.call('PEXPIRE', key, math.ceil(slot * (slots + 1) / 1000))
  out[2*i-1] = g
  out[2*i] = used
end
return out
`)

// Take implements scheduler.SharedBudget.
func (t *Tenant) Take(ctx context.Context, reqs []scheduler.Take) ([]scheduler.Taken, error) {
	keys := make([]string, len(reqs))
	args := make([]any, 0, 4*len(reqs))
	for i, r := range reqs {
		keys[i] = t.windows + r.Key
		slot := max(r.Slot.Microseconds(), 1)
		args = append(args, r.Limit, slot, r.Slots, r.Want)
	}
	v, err := takeScript.Run(ctx, t.b.client, keys, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("redis shared budget: %w", err)
	}
	if len(v) != 2*len(reqs) {
		return nil, fmt.Errorf("redis shared budget: %d values for %d windows", len(v), len(reqs))
	}
	out := make([]scheduler.Taken, len(reqs))
	for i := range out {
		out[i] = scheduler.Taken{Granted: v[2*i], Used: v[2*i+1]}
	}
	return out, nil
}

// message is a cooldown as stored and published.
type message struct {
	Origin string `json:"origin"`
	Scope  string `json:"scope"`
	App    string `json:"app,omitempty"`
	ForMS  int64  `json:"for_ms"`
}

func (t *Tenant) coolKey(c scheduler.Cooldown) string {
	if c.Scope == scheduler.ScopeApp {
		return t.cools + c.Scope + ":" + c.App
	}
	return t.cools + c.Scope
}

// Publish implements scheduler.SharedBudget: a key that expires with the
// cooldown, for agents that start meanwhile, and a message for the running
// ones. A longer cooldown already stored is kept.
func (t *Tenant) Publish(ctx context.Context, c scheduler.Cooldown) error {
	ms := max(c.For.Milliseconds(), 1)
	data, err := json.Marshal(message{Origin: c.Origin, Scope: c.Scope, App: c.App, ForMS: ms})
	if err != nil {
		return err
	}
	key := t.coolKey(c)
	ttl := time.Duration(ms) * time.Millisecond
	cmds, _ := t.b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		// NX then GT: a longer cooldown stored already is kept, a shorter
		// one extended.
		p.SetArgs(ctx, key, data, redis.SetArgs{Mode: "NX", TTL: ttl})
		p.Do(ctx, "PEXPIRE", key, ttl.Milliseconds(), "GT")
		p.Publish(ctx, t.channel, data)
		return nil
	})
	for _, c := range cmds {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("redis shared budget: publish cooldown: %w", err)
		}
	}
	if len(cmds) == 0 {
		return errors.New("redis shared budget: publish cooldown: no answer")
	}
	return nil
}

// Watch implements scheduler.SharedBudget. After each (re)connection it
// reads the cooldowns in force, so that none published while it was away
// is missed.
func (t *Tenant) Watch(ctx context.Context, f func(scheduler.Cooldown)) {
	for ctx.Err() == nil {
		err := t.watchOnce(ctx, f)
		if ctx.Err() != nil {
			return
		}
		t.log.Debug("cooldown subscription lost; retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (t *Tenant) watchOnce(ctx context.Context, f func(scheduler.Cooldown)) error {
	ps := t.b.client.Subscribe(ctx, t.channel)
	defer ps.Close()
	// A blocked receive does not watch ctx: closing the subscription ends it.
	stop := context.AfterFunc(ctx, func() { ps.Close() })
	defer stop()
	// Subscribed before reading the keys: a cooldown published in between
	// arrives twice rather than never.
	if _, err := ps.Receive(ctx); err != nil {
		return err
	}
	if err := t.current(ctx, f); err != nil {
		return err
	}
	for {
		m, err := ps.ReceiveMessage(ctx)
		if err != nil {
			return err
		}
		if c, ok := decode([]byte(m.Payload), -1); ok {
			f(c)
		}
	}
}

func (t *Tenant) current(ctx context.Context, f func(scheduler.Cooldown)) error {
	iter := t.b.client.Scan(ctx, 0, t.cools+"*", 100).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		data, err := t.b.client.Get(ctx, key).Bytes()
		if errors.Is(err, redis.Nil) {
			continue // expired meanwhile
		}
		if err != nil {
			return err
		}
		ttl, err := t.b.client.PTTL(ctx, key).Result()
		if err != nil {
			return err
		}
		if c, ok := decode(data, ttl); ok {
			c.Origin = "" // stored: even our own, from before a restart, counts
			f(c)
		}
	}
	return iter.Err()
}

// decode reads a cooldown; ttl, if not negative, is what remains of it.
func decode(data []byte, ttl time.Duration) (scheduler.Cooldown, bool) {
	var m message
	if json.Unmarshal(data, &m) != nil || m.ForMS <= 0 {
		return scheduler.Cooldown{}, false
	}
	c := scheduler.Cooldown{Origin: m.Origin, Scope: m.Scope, App: m.App, For: time.Duration(m.ForMS) * time.Millisecond}
	if ttl >= 0 {
		if ttl == 0 {
			return c, false
		}
		c.For = ttl
	}
	return c, true
}

// Ping reports whether Redis answers.
func (b *Budget) Ping(ctx context.Context) error { return b.client.Ping(ctx).Err() }
