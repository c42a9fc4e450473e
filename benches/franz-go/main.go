// Command franz-go-consumer is the franz-go peer in the benchmark: a kgo consumer group
// written as franz-go's own examples write one, polling fetches in a loop with auto-commit
// off. It consumes -messages messages from -topic in -group, then commits the offsets it
// consumed and leaves the group. It prints one JSON line with what it measured, from the
// first message to the last.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "bootstrap servers, comma-separated")
	topic := flag.String("topic", "", "topic to consume")
	group := flag.String("group", "", "consumer group")
	messages := flag.Int64("messages", 1_000_000, "messages to consume before exiting")
	flag.Parse()

	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(*brokers, ",")...),
		kgo.ConsumerGroup(*group),
		kgo.ConsumeTopics(*topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
	)
	if err != nil {
		log.Fatalf("creating the client: %v", err)
	}

	ctx := context.Background()
	var count, bytes int64
	var first, last time.Time
	for count < *messages {
		fetches := client.PollFetches(ctx)
		fetches.EachError(func(topic string, partition int32, err error) {
			log.Printf("fetch %s/%d: %v", topic, partition, err)
		})
		fetches.EachRecord(func(record *kgo.Record) {
			if first.IsZero() {
				first = time.Now()
			}
			count++
			bytes += int64(len(record.Value))
		})
	}
	last = time.Now()
	if err := client.CommitUncommittedOffsets(ctx); err != nil {
		log.Fatalf("commit: %v", err)
	}
	client.Close()

	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"messages": count,
		"bytes":    bytes,
		"seconds":  last.Sub(first).Seconds(),
	})
}
