// The chat function's list of the state keys the scheduler keeps
// (supabase/functions/chat/tools/definitions.ts), printed as a JSON array for
// tests/integration/test_lifecycle_state_keys.py.
import { LIFECYCLE_STATE_KEYS } from "../../supabase/functions/chat/tools/definitions.ts";

console.log(JSON.stringify([...LIFECYCLE_STATE_KEYS]));
