-- 1,000,000 users for the search benchmark: "<First> <Surname> <n>", genders in turn,
-- a tenth of them with a stored (offline) presence. Run on a migrated database.
INSERT INTO users (id, name, gender)
SELECT 'bench-' || i,
       (ARRAY['Anna','Maria','Elena','Sofia','Olga','Irina','Laura','Emma','Julia','Clara',
              'Marta','Nina','Eva','Lena','Sara','Alice','Helen','Rosa','Ines','Vera',
              'John','Peter','Paul','Mark','Ivan','Oleg','Luca','Marco','Hugo','Omar',
              'Ali','Emre','Mehmet','Can','Jan','Piotr','Tomas','Lars','Erik','Noah'])[1 + i % 40]
       || ' ' ||
       (ARRAY['Smith','Garcia','Kowalski','Yilmaz','Kaya','Demir','Novak','Horvat','Rossi','Bianchi',
              'Muller','Schmidt','Martin','Bernard','Dubois','Silva','Santos','Ivanova','Petrov','Nowak',
              'Jensen','Hansen','Larsen','Nielsen','Berg','Lind','Kim','Lee','Park','Chen',
              'Wang','Singh','Khan','Ali','Haddad','Cohen','Levi','OBrien','Murphy','Kelly'])[1 + (i / 40) % 40]
       || ' ' || i,
       (ARRAY['female','male','other'])[1 + i % 3]
FROM generate_series(1, 1000000) AS i
ON CONFLICT (id) DO NOTHING;

INSERT INTO user_presence (user_id, status, online, last_seen, version, updated_at)
SELECT 'bench-' || i, 'offline', false, now() - i * interval '1 second', i, now() - i * interval '1 second'
FROM generate_series(1, 1000000, 10) AS i
ON CONFLICT (user_id) DO NOTHING;

ANALYZE users;
ANALYZE user_presence;
