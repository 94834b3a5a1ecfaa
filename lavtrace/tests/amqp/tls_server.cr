# tests/amqp.rs's Crystal AMQPS server: LavinMQ's runtime and its TLS (Crystal's
# OpenSSL::SSL::Socket on the system's libssl), every connection on a fiber of one thread,
# which waits for its socket inside SSL_read while the other fibers run SSL calls on their
# own stacks: the case a uretprobe on SSL_read would break.
#
# Args: PORT CERT KEY CONNECTIONS PUBLISHES MARKER. CONNECTIONS client fibers of this
# process connect over TLS; each sends the protocol header, channel.open, confirm.select,
# PUBLISHES publishes (method, content header, one body frame holding MARKER) each in three
# writes 2 ms apart, so that the server fibers wait inside SSL_read mid-frame, then
# connection.close. The server reads frame by frame, confirms each publish with a single
# basic.ack, and answers connection.close with close-ok. Start protocol as lavtrace-common's
# start.rs: `ready PID`, a line on stdin, the work, `done`.
require "socket"
require "openssl"

BE = IO::ByteFormat::BigEndian

port = ARGV[0].to_i
cert = ARGV[1]
key = ARGV[2]
connections = ARGV[3].to_i
publishes = ARGV[4].to_i
body = "#{ARGV[5]}-#{"x" * 300}".to_slice

def frame(io : IO, type : UInt8, channel : UInt16, payload : Bytes)
  io.write_byte(type)
  io.write_bytes(channel, BE)
  io.write_bytes(payload.size.to_u32, BE)
  io.write(payload)
  io.write_byte(0xCE_u8)
end

def method(class_id : Int32, method_id : Int32, args : Bytes = Bytes.empty) : Bytes
  io = IO::Memory.new
  io.write_bytes(class_id.to_u16, BE)
  io.write_bytes(method_id.to_u16, BE)
  io.write(args)
  io.to_slice
end

def shortstr(s : String) : Bytes
  io = IO::Memory.new
  io.write_byte(s.bytesize.to_u8)
  io.write(s.to_slice)
  io.to_slice
end

# One frame: {type, class, method} (0, 0 for other than a method frame).
def read_frame(io : IO) : {UInt8, UInt16, UInt16}
  h = Bytes.new(7)
  io.read_fully(h)
  payload = Bytes.new(BE.decode(UInt32, h[3, 4]))
  io.read_fully(payload)
  raise "bad frame end" unless io.read_byte == 0xCE_u8
  return {h[0], 0_u16, 0_u16} unless h[0] == 1
  {h[0], BE.decode(UInt16, payload[0, 2]), BE.decode(UInt16, payload[2, 2])}
end

def serve(sock : IO)
  header = Bytes.new(8)
  sock.read_fully(header)
  seq = 0_u64
  loop do
    type, cls, mid = read_frame(sock)
    if {cls, mid} == {60, 40}
      seq += 1
      tag = IO::Memory.new
      tag.write_bytes(seq, BE)
      tag.write_byte(0_u8)
      frame(sock, 1, 1, method(60, 80, tag.to_slice))
      sock.flush
    elsif {cls, mid} == {10, 50}
      frame(sock, 1, 0, method(10, 51))
      sock.flush
      break
    end
  end
end

def client(port : Int32, publishes : Int32, body : Bytes)
  ctx = OpenSSL::SSL::Context::Client.new
  ctx.verify_mode = OpenSSL::SSL::VerifyMode::NONE
  tcp = TCPSocket.new("127.0.0.1", port)
  c = OpenSSL::SSL::Socket::Client.new(tcp, ctx, sync_close: true)
  c.write("AMQP\u0000\u0000\u0009\u0001".to_slice)
  frame(c, 1, 1, method(20, 10, shortstr("")))
  frame(c, 1, 1, method(85, 10, Bytes[0]))
  c.flush
  publishes.times do
    m = IO::Memory.new
    args = IO::Memory.new
    args.write_bytes(0_u16, BE)
    args.write(shortstr(""))
    args.write(shortstr("lavtrace-q"))
    args.write_byte(0_u8)
    frame(m, 1, 1, method(60, 40, args.to_slice))
    h = IO::Memory.new
    h.write_bytes(60_u16, BE)
    h.write_bytes(0_u16, BE)
    h.write_bytes(body.size.to_u64, BE)
    h.write_bytes(0_u16, BE)
    frame(m, 2, 1, h.to_slice)
    frame(m, 3, 1, body)
    bytes = m.to_slice
    third = bytes.size // 3
    [bytes[0, third], bytes[third, third], bytes[2 * third..]].each do |part|
      c.write(part)
      c.flush
      sleep 2.milliseconds
    end
  end
  publishes.times { read_frame(c) }
  close = IO::Memory.new
  close.write_bytes(200_u16, BE)
  close.write(shortstr("bye"))
  close.write_bytes(0_u32, BE)
  frame(c, 1, 0, method(10, 50, close.to_slice))
  c.flush
  read_frame(c)
  c.close
end

server = TCPServer.new("127.0.0.1", port)
ctx = OpenSSL::SSL::Context::Server.new
ctx.certificate_chain = cert
ctx.private_key = key
STDOUT.puts "ready #{Process.pid}"
STDOUT.flush
STDIN.gets
done = Channel(Nil).new
connections.times do
  spawn do
    client(port, publishes, body)
    done.send(nil)
  end
end
connections.times do
  tcp = server.accept
  spawn do
    sock = OpenSSL::SSL::Socket::Server.new(tcp, ctx, sync_close: true)
    serve(sock)
    sock.close
    done.send(nil)
  end
end
(2 * connections).times { done.receive }
STDOUT.puts "done"
STDOUT.flush
