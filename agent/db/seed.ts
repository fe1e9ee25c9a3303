/** A representative GEM database and sample device-scripts/config folders, for the embedded default and tests. */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Sql, TransactionSql } from 'postgres';
import type { MasterKey } from '../../shared/envelope';
import { sealSecret } from '../keys/secrets';

export const GEM_SCHEMA_SQL = `
create table users (
  id serial primary key, username text not null unique, display_name text not null,
  password_hash text not null, role text not null check (role in ('admin','installer','user')),
  created_at timestamptz not null default now());
create table zones (
  id serial primary key, name text not null, parent_id int references zones(id), sort_order int not null default 0);
create table drivers (id serial primary key, name text not null unique, version text not null, script_path text not null);
create table devices (
  id serial primary key, name text not null, zone_id int references zones(id), driver_id int references drivers(id),
  address text, enabled boolean not null default true, config jsonb not null default '{}', created_at timestamptz not null default now());
create table attributes (
  id serial primary key, device_id int not null references devices(id) on delete cascade, name text not null,
  value text, secure boolean not null default false, updated_at timestamptz not null default now(), unique (device_id, name));
create table macros (id serial primary key, name text not null, definition jsonb not null, enabled boolean not null default true);
create table ui_configs (id serial primary key, name text not null unique, layout jsonb not null);
create table system_info (key text primary key, value text not null);
create table attribute_history (id bigserial primary key, attribute_id int not null, value text, recorded_at timestamptz not null);
create index attribute_history_recorded_at on attribute_history (recorded_at);
create table request_history (
  id bigserial primary key, device_id int not null, request text not null, response text, status int not null, created_at timestamptz not null);
create index request_history_created_at on request_history (created_at);
create table access_log (id bigserial primary key, user_id int, action text not null, ip inet, created_at timestamptz not null);
create index access_log_created_at on access_log (created_at);
`;

/** Row counts the seed produces, so tests can check them. */
export const SEED_COUNTS = {
  users: 5,
  zones: 8,
  drivers: 6,
  devices: 60,
  attributes: 360,
  macros: 20,
  ui_configs: 4,
  attribute_history: 4000,
  request_history: 1500,
  access_log: 800,
} as const;

/** True if the database already holds GEM's tables. */
export async function hasGemSchema(sql: Sql | TransactionSql): Promise<boolean> {
  const rows =
    await sql`select 1 from information_schema.tables where table_schema = 'public' and table_name = 'devices'`;
  return rows.length > 0;
}

/**
 * Creates GEM's tables and fills them: a few thousand rows, history spread over 200 days, and secure
 * attributes sealed under `secureKey` (as GEM does with the installation's active key). Once: a
 * second process seeding at the same moment (the service and a CLI command on a fresh data dir) waits
 * for the first and finds its tables.
 */
export async function seedGemDatabase(sql: Sql, secureKey: MasterKey): Promise<void> {
  await sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(hashtext('gem_backup.seed'))`;
    if (await hasGemSchema(tx)) return;
    await tx.unsafe(GEM_SCHEMA_SQL);
    await tx.unsafe(`
      insert into system_info values ('gem_version', '4.2.1'), ('site_name', 'Sample Residence');
      insert into users (username, display_name, password_hash, role)
        select 'user' || g, 'User ' || g, '$argon2id$v=19$m=65536,t=3,p=4$' || md5(g::text), case when g = 1 then 'admin' when g = 2 then 'installer' else 'user' end
        from generate_series(1, 5) g;
      insert into zones (name, parent_id, sort_order) values ('House', null, 0);
      insert into zones (name, parent_id, sort_order)
        select z, 1, o from unnest(array['Living Room','Kitchen','Master Bedroom','Garage','Garden','Office','Cinema']) with ordinality t(z, o);
      insert into drivers (name, version, script_path)
        select d, '1.' || o, 'drivers/' || lower(replace(d, ' ', '-')) || '.js'
        from unnest(array['Lutron Caseta','Sonos','Hue Bridge','Nest Thermostat','Generic IR','Axis Camera']) with ordinality t(d, o);
      insert into devices (name, zone_id, driver_id, address, config)
        select 'Device ' || g, 1 + (g % 8), 1 + (g % 6), '192.0.2.' || g, jsonb_build_object('pollMs', 1000 * (1 + g % 5), 'channel', g)
        from generate_series(1, 60) g;
      insert into attributes (device_id, name, value, secure)
        select d, a, case a when 'power' then (case when d % 2 = 0 then 'on' else 'off' end)
                            when 'level' then (d * 7 % 100)::text when 'temperature' then (18 + d % 7)::text
                            when 'firmware' then '2.' || (d % 9) || '.0' when 'label' then 'Device ' || d end, false
        from generate_series(1, 60) d, unnest(array['power','level','temperature','firmware','label']) a;
      insert into macros (name, definition)
        select 'Macro ' || g, jsonb_build_object('steps', jsonb_build_array(jsonb_build_object('device', 1 + g % 60, 'set', 'power', 'to', 'on')))
        from generate_series(1, 20) g;
      insert into ui_configs (name, layout)
        select n, jsonb_build_object('columns', 3, 'tiles', g * 4) from unnest(array['main','kitchen','mobile','kiosk']) with ordinality t(n, g);
      insert into attribute_history (attribute_id, value, recorded_at)
        select 1 + g % 300, (g % 100)::text, now() - (g % 200) * interval '1 day' - (g % 1440) * interval '1 minute'
        from generate_series(1, 4000) g;
      insert into request_history (device_id, request, response, status, created_at)
        select 1 + g % 60, 'GET /state', '{"ok":true}', case when g % 50 = 0 then 500 else 200 end, now() - (g % 200) * interval '1 day'
        from generate_series(1, 1500) g;
      insert into access_log (user_id, action, ip, created_at)
        select 1 + g % 5, (array['login','logout','update_device','run_macro'])[1 + g % 4], ('198.51.100.' || (g % 250))::inet, now() - (g % 200) * interval '1 day'
        from generate_series(1, 800) g;
    `);
    // Secure attributes: door codes and Wi-Fi passwords, sealed like GEM seals them.
    for (let device = 1; device <= 60; device++) {
      const secret = `code-${device}-${(device * 7919) % 10000}`;
      await tx`insert into attributes (device_id, name, value, secure)
               values (${device}, 'access_code', ${sealSecret(secret, secureKey, 'secure-attribute')}, true)`;
    }
  });
}

/** Writes a small device-scripts folder and (when given) config folder, as a GEM install would have. */
export async function writeSampleFolders(scriptsDir: string, configDir?: string): Promise<void> {
  const drivers = ['lutron-caseta', 'sonos', 'hue-bridge', 'nest-thermostat', 'generic-ir', 'axis-camera'];
  await mkdir(join(scriptsDir, 'drivers'), { recursive: true });
  await mkdir(join(scriptsDir, 'macros'), { recursive: true });
  for (const [i, name] of drivers.entries()) {
    await writeFile(
      join(scriptsDir, 'drivers', `${name}.js`),
      `// ${name} driver v1.${i + 1}\nexport function poll(device) {\n  return device.request('GET /state');\n}\n`,
    );
  }
  await writeFile(
    join(scriptsDir, 'macros', 'good-night.js'),
    `export default [{ set: 'power', to: 'off' }];\n`,
  );
  await writeFile(join(scriptsDir, 'README.txt'), 'Device scripts for this GEM controller.\n');
  if (configDir === undefined) return;
  await mkdir(configDir, { recursive: true });
  await writeFile(
    join(configDir, 'gem.json'),
    `${JSON.stringify({ version: '4.2.1', site: 'Sample Residence' }, null, 2)}\n`,
  );
  await writeFile(
    join(configDir, 'network.json'),
    `${JSON.stringify({ hostname: 'gem-controller', dhcp: true }, null, 2)}\n`,
  );
}
