          %owg = arith.subi %c1, %wg : index
{{other}}
{{release}}
