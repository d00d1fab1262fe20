          %{{p}}k0 = arith.constant 0 : index
{{first_loads}}
          %{{p}}acc:{{carried}} = scf.for %{{p}}kc = %c0 to %cK step %cKC iter_args({{inits}}) -> ({{types}}) {
            gpu.barrier
{{staging}}
            %{{p}}kn = arith.addi %{{p}}kc, %cKC : index
            %{{p}}more = arith.cmpi ult, %{{p}}kn, %cK : index
            %{{p}}kp = arith.select %{{p}}more, %{{p}}kn, %{{p}}kc : index
{{next_loads}}
            gpu.barrier
{{multiply}}
            scf.yield {{accs}}, {{next}} : {{types}}
          }
{{store}}
