import type { Listener } from '../config/schema';
import { listenerRegion } from '../config/load';

/**
 * Why a database refuses a login the proxy made, most likely first. One list serves the hint
 * appended to the server's error (both engines) and `doctor`'s likely causes.
 */
export function refusedLoginCauses(l: Listener, user = '<user>'): string[] {
  if (l.auth.mode === 'password') return ['auth.password is not the current password of the database user'];
  const region = listenerRegion(l) ?? '<region>';
  return [
    l.engine === 'postgres'
      ? `the database user "${user}" lacks the rds_iam role (GRANT rds_iam TO "${user}")`
      : `the database user '${user}' was not created IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'`,
    `the IAM policy lacks rds-db:connect on arn:aws:rds-db:${region}:<ACCOUNT>:dbuser:<DbiResourceId>/${user}`,
    `the region is wrong: auth.region (${region}) must be the database's region`,
    'the host clock is off (tokens are signed with the local time)',
    'upstream.host is not the endpoint name the database knows (the token is signed for it)',
  ];
}

/** The causes as one hint line for a client-visible error (callers add who is speaking). */
export function refusedLoginHint(l: Listener, user?: string): string {
  const how = l.auth.mode === 'password' ? 'auth.password' : 'an IAM token';
  return `logged in with ${how}. Check: ${refusedLoginCauses(l, user).join('; ')}`;
}
