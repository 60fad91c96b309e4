-- Put running executions whose lease expired back in the queue now, instead
-- of waiting for the next worker tick or pg_cron minute.
-- psql "$DATABASE_URL" -f sql/admin/rescue_now.sql
select scheduler.rescue_expired() as executions_moved;
