# The web cloud's application server: a small guestbook on WEBrick that keeps its entries in
# MariaDB through ruby-mysql2. Shipped with cloudd's web provider; run as
#   ruby app.rb CONFIG.json
# The configuration is rendered by the provider; SIGHUP makes the app re-read it (the database
# address or password changed) without dropping the listening socket.
#
#   GET  /health   200 while the process serves requests (liveness)
#   GET  /ready    200 when the database answers (readiness), 503 otherwise
#   GET  /entries  the entries, as JSON
#   POST /entries  add the request body as an entry; 201 with its id, as JSON
#   GET  /         a page with the entry count and a visit counter
# Every response carries X-Served-By: <node>, so a balancer test can see who answered.

require "json"
require "webrick"
require "mysql2"

CONFIG_PATH = ARGV.fetch(0) { abort("usage: app.rb CONFIG.json") }

def load_config
  JSON.parse(File.read(CONFIG_PATH))
end

$config = load_config
$reload = false
$schema_ready = false
# A trap handler may not take locks; it only raises a flag that the next request acts on.
trap("HUP") { $reload = true }

def config
  if $reload
    $reload = false
    begin
      $config = load_config
      $schema_ready = false
      $stderr.puts("app: configuration reloaded")
    rescue StandardError => e
      $stderr.puts("app: reload failed, keeping the old configuration: #{e.message}")
    end
  end
  $config
end

class Unavailable < StandardError; end

# One connection per request: mysql2 clients are not thread-safe, WEBrick serves each request
# on its own thread, and a fresh connection also survives a database restart without retries.
def with_db
  db = config["database"]
  raise Unavailable, "no database assigned" if db.nil? || db["host"].nil?
  client = Mysql2::Client.new(host: db["host"], port: db["port"], username: db["user"],
                              password: db["password"], database: db["name"],
                              connect_timeout: 2, read_timeout: 5, write_timeout: 5)
  begin
    unless $schema_ready
      client.query("CREATE TABLE IF NOT EXISTS entries (id BIGINT AUTO_INCREMENT PRIMARY KEY, " \
                   "body TEXT NOT NULL, node VARCHAR(128) NOT NULL, " \
                   "created TIMESTAMP DEFAULT CURRENT_TIMESTAMP) ENGINE=InnoDB")
      client.query("CREATE TABLE IF NOT EXISTS visits (id TINYINT PRIMARY KEY, " \
                   "count BIGINT NOT NULL) ENGINE=InnoDB")
      $schema_ready = true
    end
    yield client
  ensure
    client.close
  end
rescue Mysql2::Error => e
  # The database may have come back without our tables (a replacement from its base image):
  # the next request makes them again. CREATE TABLE IF NOT EXISTS is cheap beside an error.
  $schema_ready = false
  raise Unavailable, e.message
end

def reply(res, status, body, type = "application/json")
  res.status = status
  res["Content-Type"] = type
  res["X-Served-By"] = config["node"]
  res.body = type == "application/json" ? JSON.generate(body) + "\n" : body
end

def guarded(res)
  yield
rescue Unavailable => e
  reply(res, 503, { "error" => "database unavailable: #{e.message}" })
end

server = WEBrick::HTTPServer.new(
  BindAddress: config["bind"], Port: config["port"], AccessLog: [],
  Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN)
)

server.mount_proc("/health") { |_req, res| reply(res, 200, "ok\n", "text/plain") }

server.mount_proc("/ready") do |_req, res|
  guarded(res) do
    with_db { |c| c.query("SELECT 1") }
    reply(res, 200, "ready\n", "text/plain")
  end
end

server.mount_proc("/entries") do |req, res|
  guarded(res) do
    case req.request_method
    when "GET"
      rows = with_db { |c| c.query("SELECT id, body, node FROM entries ORDER BY id").to_a }
      reply(res, 200, rows)
    when "POST"
      body = req.body.to_s
      if body.empty? || body.bytesize > 4096
        reply(res, 400, { "error" => "an entry is 1 to 4096 bytes of request body" })
      else
        id = with_db do |c|
          c.prepare("INSERT INTO entries (body, node) VALUES (?, ?)").execute(body, config["node"])
          c.last_id
        end
        reply(res, 201, { "id" => id, "node" => config["node"] })
      end
    else
      reply(res, 405, { "error" => "GET or POST" })
    end
  end
end

server.mount_proc("/") do |req, res|
  next reply(res, 404, { "error" => "not found: #{req.path}" }) unless req.path == "/"

  guarded(res) do
    visits, entries = with_db do |c|
      c.query("INSERT INTO visits (id, count) VALUES (1, 1) " \
              "ON DUPLICATE KEY UPDATE count = count + 1")
      [c.query("SELECT count FROM visits WHERE id = 1").first["count"],
       c.query("SELECT COUNT(*) AS n FROM entries").first["n"]]
    end
    reply(res, 200, "guestbook on #{config['node']}: #{entries} entries, visit #{visits}\n",
          "text/plain")
  end
end

%w[TERM INT].each { |sig| trap(sig) { server.shutdown } }
server.start
