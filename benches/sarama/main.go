// Command sarama-consumer is the Go peer in the benchmark: a Sarama consumer group written the
// way Go services usually are, with a done channel and SIGINT/SIGTERM handling. It consumes
// -messages messages from -topic in -group, marks each one, and exits after the group closes
// (committing the marked offsets). It prints one JSON line with what it measured, from the
// first message to the last.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/IBM/sarama"
)

type handler struct {
	target   int64
	count    atomic.Int64
	bytes    atomic.Int64
	first    atomic.Int64 // unix nanoseconds of the first message
	last     atomic.Int64 // unix nanoseconds of the target-th message
	done     chan struct{}
	doneOnce sync.Once
}

func (h *handler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (h *handler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *handler) ConsumeClaim(session sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for {
		select {
		case message, ok := <-claim.Messages():
			if !ok {
				return nil
			}
			h.first.CompareAndSwap(0, time.Now().UnixNano())
			h.bytes.Add(int64(len(message.Value) + len(message.Key)))
			session.MarkMessage(message, "")
			if h.count.Add(1) == h.target {
				h.last.Store(time.Now().UnixNano())
				h.doneOnce.Do(func() { close(h.done) })
			}
		case <-session.Context().Done():
			return nil
		}
	}
}

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "bootstrap servers, comma-separated")
	topic := flag.String("topic", "", "topic to consume")
	group := flag.String("group", "", "consumer group")
	messages := flag.Int64("messages", 1_000_000, "messages to consume before exiting")
	flag.Parse()

	config := sarama.NewConfig()
	config.Version = sarama.V3_6_0_0
	config.Consumer.Offsets.Initial = sarama.OffsetOldest
	config.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sarama.NewBalanceStrategyRange()}

	client, err := sarama.NewConsumerGroup(strings.Split(*brokers, ","), *group, config)
	if err != nil {
		log.Fatalf("creating the consumer group: %v", err)
	}

	h := &handler{target: *messages, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	consuming := sync.WaitGroup{}
	consuming.Add(1)
	go func() {
		defer consuming.Done()
		for ctx.Err() == nil {
			if err := client.Consume(ctx, []string{*topic}, h); err != nil {
				log.Printf("consume: %v", err)
			}
		}
	}()

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-h.done:
	case <-signals:
	}
	cancel()
	consuming.Wait()
	if err := client.Close(); err != nil {
		log.Printf("close: %v", err)
	}

	seconds := float64(h.last.Load()-h.first.Load()) / 1e9
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"messages": h.count.Load(),
		"bytes":    h.bytes.Load(),
		"seconds":  seconds,
	})
}
