# tests/gc.rs's Crystal program (LavinMQ's runtime: Crystal on Boehm GC, multi-threaded with
# -Dpreview_mt): FIBERS fibers on the worker threads allocate garbage until the collector
# has run MIN_COLLECTIONS times. Start protocol as lavtrace-common's start.rs: `ready PID`,
# a line on stdin, the work, then Boehm's own count of the collections made during the
# work (GC.prof_stats.gc_no after minus before) and `done`. The collector is disabled
# before the count is read, so nothing after it collects.

FIBERS          = 8
MIN_COLLECTIONS = 20

class Node
  def initialize(@next : Node?)
  end
end

STDOUT.puts "ready #{Process.pid}"
STDOUT.flush
STDIN.gets
before = GC.prof_stats.gc_no
done = Channel(Nil).new
FIBERS.times do
  spawn do
    while GC.prof_stats.gc_no < before + MIN_COLLECTIONS
      head : Node? = nil
      1000.times { head = Node.new(head) }
    end
    done.send(nil)
  end
end
FIBERS.times { done.receive }
GC.disable
after = GC.prof_stats.gc_no
STDOUT.puts "collections #{after - before}"
STDOUT.puts "done"
STDOUT.flush
