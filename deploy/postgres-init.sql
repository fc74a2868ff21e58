-- Cohort's three roles. Replace the passwords. The app role must stay NOSUPERUSER NOBYPASSRLS and
-- own nothing: the server refuses to start otherwise.
CREATE ROLE cohort_owner LOGIN PASSWORD 'CHANGE_ME' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
CREATE ROLE cohort_app LOGIN PASSWORD 'CHANGE_ME' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
-- Platform work (console, scheduler, sweeps, verification): reads every tenant, writes little.
CREATE ROLE cohort_platform LOGIN PASSWORD 'CHANGE_ME' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
CREATE DATABASE cohort OWNER cohort_owner ENCODING 'UTF8' TEMPLATE template0;
\connect cohort
ALTER SCHEMA public OWNER TO cohort_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO cohort_app, cohort_platform;
REVOKE ALL ON DATABASE cohort FROM PUBLIC;
GRANT CONNECT ON DATABASE cohort TO cohort_owner, cohort_app, cohort_platform;
