// The chat function's connect-time URL check (supabase/functions/chat/mcp/url_policy.ts)
// over a table of URLs, for tests/integration/test_url_rule_parity.py: reads
// {"policy", "urls", "resolves_to"} as JSON on stdin, prints one verdict per URL
// (null: accepted, else the refusal's message). Every host name resolves to
// `resolves_to`, so a verdict depends on the URL alone, as at write time.
import { checkConnectTarget, type UrlPolicy } from "../../supabase/functions/chat/mcp/url_policy.ts";

const input = JSON.parse(await new Response(Deno.stdin.readable).text()) as {
  policy: UrlPolicy;
  urls: string[];
  resolves_to: string;
};
const verdicts: (string | null)[] = [];
for (const url of input.urls) {
  try {
    await checkConnectTarget(url, input.policy, () => Promise.resolve([input.resolves_to]));
    verdicts.push(null);
  } catch (err) {
    verdicts.push(err instanceof Error ? err.message : String(err));
  }
}
console.log(JSON.stringify(verdicts));
