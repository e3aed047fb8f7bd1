// Creates the loader's own MongoDB user, with readWrite on the product's database only, the
// first time the mongo container starts on an empty volume (the image runs the scripts of
// /docker-entrypoint-initdb.d once, as the root user of MONGO_INITDB_ROOT_USERNAME).
//
// It does nothing unless MONGO_APP_USER and MONGO_APP_PASSWORD are set; the stack then runs
// without authentication, reachable only on the compose network and the host's loopback.
// With them set, point the loader at the user:
//   STACK_MONGO_URI=mongodb://<user>:<password>@mongo:27017/attack?authSource=attack
// The password is never printed.

const user = process.env.MONGO_APP_USER || "";
const password = process.env.MONGO_APP_PASSWORD || "";
const dbName = process.env.DB_NAME || "attack";

if (user === "" || password === "") {
  print("attack-etl init: MONGO_APP_USER or MONGO_APP_PASSWORD empty, no application user made");
} else {
  const appDb = db.getSiblingDB(dbName);
  if (appDb.getUser(user) === null) {
    appDb.createUser({ user: user, pwd: password, roles: [{ role: "readWrite", db: dbName }] });
    print(`attack-etl init: made user ${user} with readWrite on ${dbName}`);
  } else {
    print(`attack-etl init: user ${user} exists on ${dbName}, left as it is`);
  }
}
